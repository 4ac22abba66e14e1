// A GRU recurrence for CPU training: the whole unroll (forward and backward) in one call, with the
// gate math of each step fused into one pass over [N, H] (fp32, vectorised by the compiler) and the
// matrix products in the inputs' dtype (bf16 for the matrix units, or fp32). Where the build targets
// a CPU with AMX tiles, a bf16 unroll runs 16 rows at a time through every step instead, each step's
// products on the tiles (fp32 out, biases included) feeding the gates directly, with no call into torch
// per step; its backward also sums the weight gradients and computes dx on the tiles as it goes.
//
// Why: with nn.GRU or autograd ops, each step's gate math is ~20 separate elementwise passes (and,
// under bf16 autocast, runs in bf16, which CPUs compute slowly); those passes, not the products,
// bounded the learner. Built at first use, with batch_kernels.cpp, by common/kernels/__init__.py;
// the Python side is common/kernels/fused_gru.py, the helpers both sources use are in kernels.h.
//
// Gates (PyTorch's nn.GRU, r, z, n along the 3H axis):
//   r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z), n = tanh(gi_n + r * gh_n),
//   h' = n + z * (h - n),   gh = h @ W_hh^T + b_hh.
#include <torch/extension.h>

#include "kernels.h"

using namespace ovmse;  // the shared helpers of kernels.h

// AMX tiles where the compiler targets a CPU that has them (-march=native on Sapphire Rapids and
// newer): the per-step products run there, 16 rows at a time, fused with the gate math.
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define OVMSE_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define OVMSE_AMX 0
#endif

namespace {

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_inline(-x)); }
// tanh through exp keeps one transcendental for all three gates.
inline float tanh_by_exp(float x) { return 2.0f / (1.0f + exp_inline(-2.0f * x)) - 1.0f; }

// The gate math of one row: from gi (without b_ih) and gh (without b_hh) to r, z, n and h' (fp32),
// h' also in the products' dtype and gh's n part (with b_hh), where those pointers are set.
// scratch: 6H floats.
template <typename TI, typename TG, typename TM>
inline void forward_row(const TI* gi, const TG* gh, const float* b_ih, const float* b_hh, const float* h_row,
                        float* rz_row, float* n_row, float* out_row, TM* out_mm, TM* ghn_out, float* scratch,
                        int64_t H) {
  float* a = scratch;      // gi row, fp32
  float* g = a + 3 * H;    // gh row, fp32
  load_row(gi, a, 3 * H);
  load_row(gh, g, 3 * H);
#pragma omp simd
  for (int64_t j = 0; j < 3 * H; ++j) {  // the biases here: addmm's bias add costs more than this
    a[j] += b_ih[j];
    g[j] += b_hh[j];
  }
#pragma omp simd
  for (int64_t j = 0; j < 2 * H; ++j) rz_row[j] = sigmoid(a[j] + g[j]);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float nn = tanh_by_exp(a[2 * H + j] + rz_row[j] * g[2 * H + j]);
    n_row[j] = nn;
    out_row[j] = nn + rz_row[H + j] * (h_row[j] - nn);
  }
  if (out_mm != nullptr) store_row(out_row, out_mm, H);
  if (ghn_out != nullptr) store_row(g + 2 * H, ghn_out, H);
}

// One forward step for rows [begin, end): writes rz, n, h_next (fp32) and h_next_mm (mm dtype).
template <typename TI, typename TM>
void forward_gates(const TI* gi, const TM* gh, const float* b_ih, const float* b_hh, const float* h, float* rz,
                   float* n,
                   float* h_next, TM* h_next_mm, TM* ghn_out, int64_t N, int64_t H) {
  at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(6 * H);
    for (int64_t i = begin; i < end; ++i) {
      forward_row<TI, TM, TM>(gi + i * 3 * H, gh + i * 3 * H, b_ih, b_hh, h + i * H, rz + i * 2 * H, n + i * H,
                              h_next + i * H, h_next_mm != nullptr ? h_next_mm + i * H : nullptr,
                              ghn_out != nullptr ? ghn_out + i * H : nullptr, scratch.data(), H);
    }
  });
}

// The backward gate math of one row. g = dout + carry + rec is dL/dh_{t+1} (rec = dgh_{t+1} @ W_hh,
// the part through the products; null at the last step); writes dgh (mm dtype), dgi (gi dtype),
// carry = g * z (the part of dL/dh_t that skips the products), and adds dgh and dgi_n to the row's
// bias sums [4H]. scratch: 7H floats.
template <typename TI, typename TM, typename TR>
inline void backward_row(const TM* dout, float* carry_row, const TR* recurrent, const float* r, const float* n_row,
                         const TM* gh_n, const float* h_row, TM* dgh, TI* dgi, float* sums, float* scratch,
                         int64_t H) {
  float* ghn = scratch;       // gh's n part, fp32
  float* rec = ghn + H;       // dgh_{t+1} @ W_hh row, fp32
  float* d = rec + H;         // d(gh) row: r, z, n parts; d(gi) = r, z parts and dan
  float* dan = d + 3 * H;
  float* dout_row = dan + H;  // dL/dh_{t+1} from the output, fp32
  load_row(gh_n, ghn, H);
  load_row(dout, dout_row, H);
  if (recurrent != nullptr) {
    load_row(recurrent, rec, H);
  } else {
    for (int64_t j = 0; j < H; ++j) rec[j] = 0.0f;
  }
  const float* z = r + H;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float gsum = dout_row[j] + carry_row[j] + rec[j];
    const float nn = n_row[j];
    const float dn = gsum * (1.0f - z[j]) * (1.0f - nn * nn);  // d(gi_n + r * gh_n)
    d[j] = dn * ghn[j] * r[j] * (1.0f - r[j]);                   // d(gi_r + gh_r)
    d[H + j] = gsum * (h_row[j] - nn) * z[j] * (1.0f - z[j]);    // d(gi_z + gh_z)
    d[2 * H + j] = dn * r[j];                                    // d(gh_n)
    dan[j] = dn;
    carry_row[j] = gsum * z[j];
  }
#pragma omp simd
  for (int64_t j = 0; j < 3 * H; ++j) sums[j] += d[j];
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) sums[3 * H + j] += dan[j];
  store_row(d, dgh, 3 * H);
  store_row(d, dgi, 2 * H);
  store_row(dan, dgi + 2 * H, H);
}

// One backward step for rows [begin, end), over `backward_row`; bias_sums [N, 4H] (fp32; summed over
// rows at the end: the biases' grads).
template <typename TI, typename TM>
void backward_gates(const TM* dout, float* carry, const TM* recurrent, const float* rz, const float* n,
                    const TM* gh_n, const float* h_prev, TM* dgh, TI* dgi, float* bias_sums, int64_t N,
                    int64_t H) {
  at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(7 * H);
    for (int64_t i = begin; i < end; ++i) {
      backward_row<TI, TM, TM>(dout + i * H, carry + i * H, recurrent != nullptr ? recurrent + i * H : nullptr,
                               rz + i * 2 * H, n + i * H, gh_n + i * H, h_prev + i * H, dgh + i * 3 * H,
                               dgi + i * 3 * H, bias_sums + i * 4 * H, scratch.data(), H);
    }
  });
}

// Linux lets a process use AMX tiles only after it asks (oneDNN asks too; asking twice is harmless).
bool amx_permitted() {
#if OVMSE_AMX
  static const bool permitted = [] {
    constexpr long kRequestPermission = 0x1023, kTileData = 18;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
  }();
  return permitted;
#else
  return false;
#endif
}

#if OVMSE_AMX
constexpr int64_t kBlock = 16;  // rows of a tile: the recurrence runs 16 rows at a time, all steps

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-1: two 16 x 16 fp32 results; 2: 16 rows x 32 bf16 of the left operand; 3-4: 16 pairs of
// rows x 16 columns of the right operand, pair-interleaved. Every tile is 16 rows of 64 bytes.
inline void configure_tiles() {
  TileConfig config;
  for (int tile = 0; tile < 5; ++tile) {
    config.bytes_per_row[tile] = 64;
    config.rows[tile] = 16;
  }
  _tile_loadconfig(&config);
}

// B [K, M] (row-major bf16) as AMX reads it: one 16 x 32 tile per 32-row chunk kc and 16-column chunk
// mc, whose row p holds, for each column c, B[32 kc + 2 p][16 mc + c] then B[32 kc + 2 p + 1][16 mc + c].
std::vector<uint16_t> pack_pairs(const at::Tensor& b) {
  const int64_t K = b.size(0), M = b.size(1);
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(b.data_ptr<c10::BFloat16>());
  std::vector<uint16_t> packed(K * M);
  int64_t at = 0;
  for (int64_t kc = 0; kc < K / 32; ++kc)
    for (int64_t mc = 0; mc < M / 16; ++mc)
      for (int64_t p = 0; p < 16; ++p)
        for (int64_t c = 0; c < 16; ++c)
          for (int64_t e = 0; e < 2; ++e) packed[at++] = bits[(32 * kc + 2 * p + e) * M + 16 * mc + c];
  return packed;
}

// Tiles 0-1 += A @ B: A (16 rows of 32 bf16 at `a`, rows a_bytes apart) on tile 2, times two 16 x 32
// pair-interleaved B tiles (at b0, b1; 64-byte rows) on tiles 3-4.
inline void multiply_add(const void* a, int64_t a_bytes, const void* b0, const void* b1) {
  _tile_loadd(2, a, a_bytes);
  _tile_loadd(3, b0, 64);
  _tile_loadd(4, b1, 64);
  _tile_dpbf16ps(0, 2, 3);
  _tile_dpbf16ps(1, 2, 4);
}

// out [16, M] fp32 = a [16, K] (bf16 bits, rows `a_stride` elements apart) @ B [K, M] (as `pack_pairs`
// lays it out); K and M multiples of 32.
inline void tile_product(const uint16_t* a, const uint16_t* packed, float* out, int64_t K, int64_t M,
                         int64_t a_stride) {
  const int64_t k_chunks = K / 32, m_chunks = M / 16;
  for (int64_t mc = 0; mc < m_chunks; mc += 2) {
    _tile_zero(0);
    _tile_zero(1);
    for (int64_t kc = 0; kc < k_chunks; ++kc) {
      const uint16_t* b = packed + (kc * m_chunks + mc) * 512;
      multiply_add(a + 32 * kc, a_stride * 2, b, b + 512);
    }
    _tile_stored(0, out + 16 * mc, M * 4);
    _tile_stored(1, out + 16 * (mc + 1), M * 4);
  }
}

inline const uint16_t* bits_of(const c10::BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); }

// One pair of 16-column chunks (mc, mc + 1) of a [16, M] fp32 result on tiles 0-1: starting from
// `init` (16 rows, `init_ld` floats apart: the biases, repeated per row), plus a1 @ B1 and, where a2
// is set, a2 @ B2 (B1, B2 laid out by `pack_pairs`, both M wide). Written to out (rows out_ld apart).
inline void pair_product(const float* init, int64_t init_ld, const uint16_t* a1, int64_t a1_ld,
                         const uint16_t* p1, int64_t K1, const uint16_t* a2, int64_t a2_ld, const uint16_t* p2,
                         int64_t K2, int64_t m_chunks, int64_t mc, float* out, int64_t out_ld) {
  _tile_loadd(0, init, init_ld * 4);
  _tile_loadd(1, init + 16, init_ld * 4);
  for (int64_t kc = 0; kc < K1 / 32; ++kc)
    multiply_add(a1 + 32 * kc, a1_ld * 2, p1 + (kc * m_chunks + mc) * 512, p1 + (kc * m_chunks + mc + 1) * 512);
  if (a2 != nullptr) {
    for (int64_t kc = 0; kc < K2 / 32; ++kc)
      multiply_add(a2 + 32 * kc, a2_ld * 2, p2 + (kc * m_chunks + mc) * 512, p2 + (kc * m_chunks + mc + 1) * 512);
  }
  _tile_stored(0, out, out_ld * 4);
  _tile_stored(1, out + 16, out_ld * 4);
}

// The biases in the layout of `pre` (see forward_amx), repeated for 16 rows.
std::vector<float> gate_init(const float* b_ih, const float* b_hh, int64_t H) {
  const int64_t P = 4 * H;
  std::vector<float> init(kBlock * P);  // the biases in the layout of pre, repeated per row
  for (int64_t i = 0; i < kBlock; ++i)
    for (int64_t j = 0; j < H; ++j) {
      init[i * P + j] = b_ih[j] + b_hh[j];
      init[i * P + H + j] = b_ih[H + j] + b_hh[H + j];
      init[i * P + 2 * H + j] = b_ih[2 * H + j];
      init[i * P + 3 * H + j] = b_hh[2 * H + j];
    }
  return init;
}

// pre [16, 4H] of one step from x [16, width] and h [16, H] (bf16 bits), starting from `gate_init`.
inline void gate_products(const float* init, const uint16_t* xb, int64_t width, const uint16_t* wi_packed,
                          const uint16_t* hb, const uint16_t* wh_packed, int64_t H, float* pre) {
  const int64_t m_chunks = 3 * H / 16, rz_chunks = 2 * H / 16, P = 4 * H;
  for (int64_t mc = 0; mc < rz_chunks; mc += 2)
    pair_product(init + 16 * mc, P, xb, width, wi_packed, width, hb, H, wh_packed, H, m_chunks, mc, pre + 16 * mc, P);
  for (int64_t mc = rz_chunks; mc < m_chunks; mc += 2) {
    const int64_t col = 16 * mc;  // = 2H + 16 (mc - rz_chunks)
    pair_product(init + col, P, xb, width, wi_packed, width, nullptr, 0, nullptr, 0, m_chunks, mc, pre + col, P);
    pair_product(init + H + col, P, hb, H, wh_packed, H, nullptr, 0, nullptr, 0, m_chunks, mc, pre + H + col, P);
  }
}

// One row's gates from its pre (see forward_amx): r, z, n out, h (h_t in, h_{t+1} out).
inline void gate_row(const float* p, float* rz_row, float* n_row, float* h_row, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < 2 * H; ++j) rz_row[j] = sigmoid(p[j]);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float nn = tanh_by_exp(p[2 * H + j] + rz_row[j] * p[3 * H + j]);
    n_row[j] = nn;
    h_row[j] = nn + rz_row[H + j] * (h_row[j] - nn);
  }
}

// relu on bf16 bits: a value stays where it is above zero as a signed 16-bit integer (sign bit clear,
// not +0); torch's relu too maps -0 to 0. `keep_where_positive` is its backward, on a gradient row.
inline void relu_bits(const uint16_t* src, int64_t count, uint16_t* dst) {
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) dst[j] = static_cast<int16_t>(src[j]) > 0 ? src[j] : 0;
}
inline void keep_where_positive(const uint16_t* x, int64_t count, uint16_t* grad) {
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) grad[j] = static_cast<int16_t>(x[j]) > 0 ? grad[j] : 0;
}

// The forward unroll on AMX: each block of 16 rows runs every step with its state in local buffers.
// The products come out of the tiles in fp32, biases included, straight into the gate math (so the
// [T, N, 3H] input projection is never stored): per row, pre = [x W_ih,rz^T + h W_hh,rz^T + b_rz
// (summed on the tiles), x W_ih,n^T + b_ih,n, h W_hh,n^T + b_hh,n], 4H floats. With relu_x the inputs are
// relu(x): the layer before's activation, applied here as the rows are read.
void forward_amx(const c10::BFloat16* x, int64_t width, bool relu_x, const uint16_t* wi_packed, const float* h0,
                 const uint16_t* wh_packed, const float* b_ih, const float* b_hh, float* hs, c10::BFloat16* hs_mm,
                 c10::BFloat16* gh_n, float* rz, float* n, bool save, int64_t T, int64_t N, int64_t H) {
  const int64_t P = 4 * H;
  const std::vector<float> init = gate_init(b_ih, b_hh, H);
  at::parallel_for(0, (N + kBlock - 1) / kBlock, 1, [&](int64_t first, int64_t last) {
    configure_tiles();
    std::vector<float> h(kBlock * H), pre(kBlock * P), rz_local(kBlock * 2 * H), n_local(kBlock * H);
    std::vector<c10::BFloat16> h_mm(kBlock * H), x_tail(kBlock * width);
    for (int64_t block = first; block < last; ++block) {
      const int64_t r0 = block * kBlock, rows = std::min(kBlock, N - r0);
      std::fill(h_mm.begin(), h_mm.end(), c10::BFloat16(0.0f));  // rows past N stay zero
      std::fill(x_tail.begin(), x_tail.end(), c10::BFloat16(0.0f));
      for (int64_t i = 0; i < rows; ++i) {
        std::copy(h0 + (r0 + i) * H, h0 + (r0 + i + 1) * H, h.data() + i * H);
        store_row(h.data() + i * H, h_mm.data() + i * H, H);
      }
      for (int64_t t = 0; t < T; ++t) {
        const c10::BFloat16* x_rows = x + (t * N + r0) * width;
        if (relu_x) {
          relu_bits(bits_of(x_rows), rows * width, reinterpret_cast<uint16_t*>(x_tail.data()));
          x_rows = x_tail.data();
        } else if (rows < kBlock) {  // a partial block: the tile would read past this step's rows
          std::copy(x_rows, x_rows + rows * width, x_tail.data());
          x_rows = x_tail.data();
        }
        gate_products(init.data(), bits_of(x_rows), width, wi_packed, bits_of(h_mm.data()), wh_packed, H, pre.data());
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t row = r0 + i;
          const float* p = pre.data() + i * P;
          float* rz_row = save ? rz + (t * N + row) * 2 * H : rz_local.data() + i * 2 * H;
          float* n_row = save ? n + (t * N + row) * H : n_local.data() + i * H;
          float* h_row = h.data() + i * H;  // h_t in, h_{t+1} out
          gate_row(p, rz_row, n_row, h_row, H);
          c10::BFloat16* out_mm = hs_mm + ((t + 1) * N + row) * H;
          store_row(h_row, out_mm, H);
          if (save) {
            store_row(p + 3 * H, gh_n + (t * N + row) * H, H);
            std::copy(h_row, h_row + H, hs + ((t + 1) * N + row) * H);  // the backward's h_t
          }
          std::memcpy(h_mm.data() + i * H, out_mm, H * sizeof(c10::BFloat16));
        }
      }
    }
    _tile_release();
  });
}

// The weight gradients are summed on the tiles from panels of kPanelSteps steps of a block's 16 rows:
// K = 16 kPanelSteps (step slot, row) entries, 32 per chunk kc. AMX reads a pair of K entries (rows 2p
// and 2p + 1 of one step) as one 32-bit word, low half the even row. A panel holds an input transposed,
// [K / 32][R][16 words]; a B panel a gradient, [K / 32][M / 16][16 pairs][16 columns].
constexpr int64_t kPanelSteps = 8;

// dW^T [R, M] (fp32, row-major) += A @ B for one pair of panels.
inline void accumulate_panel(const uint32_t* a_panel, int64_t R, const uint32_t* b_panel, int64_t M, float* acc) {
  const int64_t chunks = kPanelSteps / 2, m_chunks = M / 16;
  for (int64_t mt = 0; mt < R / 16; ++mt) {
    for (int64_t mc = 0; mc < m_chunks; mc += 2) {
      float* c = acc + mt * 16 * M + 16 * mc;
      _tile_loadd(0, c, M * 4);
      _tile_loadd(1, c + 16, M * 4);
      for (int64_t kc = 0; kc < chunks; ++kc)
        multiply_add(a_panel + (kc * R + mt * 16) * 16, 64, b_panel + (kc * m_chunks + mc) * 256,
                     b_panel + (kc * m_chunks + mc + 1) * 256);
      _tile_stored(0, c, M * 4);
      _tile_stored(1, c + 16, M * 4);
    }
  }
}

// One step's 16 rows (`rows` [16, R or M], ld apart) into step slot `slot` of an A or B panel.
inline void into_a_panel(const uint16_t* rows, int64_t ld, int64_t R, int64_t slot, uint32_t* panel) {
  uint32_t* base = panel + (slot / 2) * R * 16 + 8 * (slot % 2);
  for (int64_t p = 0; p < 8; ++p) {
    const uint16_t* even = rows + 2 * p * ld;
    const uint16_t* odd = even + ld;
    for (int64_t m = 0; m < R; ++m)
      base[16 * m + p] = static_cast<uint32_t>(even[m]) | (static_cast<uint32_t>(odd[m]) << 16);
  }
}
inline void into_b_panel(const uint16_t* rows, int64_t M, int64_t slot, uint32_t* panel) {
  uint32_t* base = panel + (slot / 2) * M * 16 + 8 * (slot % 2) * 16;
  for (int64_t p = 0; p < 8; ++p) {
    const uint16_t* even = rows + 2 * p * M;
    const uint16_t* odd = even + M;
    for (int64_t c = 0; c < M / 16; ++c) {
      uint32_t* out = base + c * 256 + p * 16;
#pragma omp simd
      for (int64_t j = 0; j < 16; ++j)
        out[j] = static_cast<uint32_t>(even[16 * c + j]) | (static_cast<uint32_t>(odd[16 * c + j]) << 16);
    }
  }
}

// The backward unroll on AMX, 16 rows at a time, everything on the tiles: dgh_{t+1} @ W_hh feeds step
// t's gates; dx_t = dgi_t @ W_ih is written per step; the weight gradients are summed on the tiles
// from panels of two steps' rows (dW_hh^T += h_t^T dgh_t, dW_ih^T += x_t^T dgi_t), so neither dgh nor
// dgi is ever stored. Also writes dh0 and the bias sums (one row of bias_sums per block). With relu_x
// the forward read relu(x): so do the weight gradients here, and dx is relu's backward of dL/drelu(x).
void backward_amx(const c10::BFloat16* dout, const float* hs, const c10::BFloat16* hs_mm, const float* rz,
                  const float* n, const c10::BFloat16* gh_n, const c10::BFloat16* x, int64_t W, bool relu_x,
                  const uint16_t* wh_packed, const uint16_t* wi_packed, c10::BFloat16* dx, float* acc_hh,
                  float* acc_ih, float* bias_sums, float* dh0, int64_t T, int64_t N, int64_t H) {
  const int64_t G = 3 * H;
  at::parallel_for(0, (N + kBlock - 1) / kBlock, 1, [&](int64_t first, int64_t last) {
    configure_tiles();
    float* my_hh = acc_hh + at::get_thread_num() * H * G;
    float* my_ih = acc_ih + at::get_thread_num() * W * G;
    std::vector<float> carry(kBlock * H), rec(kBlock * H), dx_rows(kBlock * W), scratch(7 * H);
    std::vector<c10::BFloat16> d(kBlock * G), g(kBlock * G);  // this block's dgh (of the step after), dgi
    const int64_t K = 16 * kPanelSteps;
    std::vector<uint32_t> a_h(H * K / 2), a_x(W * K / 2), b_h(G * K / 2), b_x(G * K / 2);
    std::vector<c10::BFloat16> h_rows(kBlock * H), x_rows(kBlock * W);  // this step's inputs (0 past N)
    for (int64_t block = first; block < last; ++block) {
      const int64_t r0 = block * kBlock, rows = std::min(kBlock, N - r0);
      std::fill(carry.begin(), carry.end(), 0.0f);
      std::fill(d.begin(), d.end(), c10::BFloat16(0.0f));
      std::fill(g.begin(), g.end(), c10::BFloat16(0.0f));
      std::fill(h_rows.begin(), h_rows.end(), c10::BFloat16(0.0f));
      std::fill(x_rows.begin(), x_rows.end(), c10::BFloat16(0.0f));
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t slot = (T - 1 - t) % kPanelSteps;
        if (t < T - 1) tile_product(bits_of(d.data()), wh_packed, rec.data(), G, H, G);
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t row = r0 + i, at = t * N + row;
          backward_row<c10::BFloat16, c10::BFloat16, float>(
              dout + at * H, carry.data() + i * H, t < T - 1 ? rec.data() + i * H : nullptr, rz + at * 2 * H,
              n + at * H, gh_n + at * H, hs + at * H, d.data() + i * G, g.data() + i * G,
              bias_sums + block * 4 * H, scratch.data(), H);
        }
        std::copy(hs_mm + (t * N + r0) * H, hs_mm + (t * N + r0 + rows) * H, h_rows.data());
        if (relu_x) {
          relu_bits(bits_of(x + (t * N + r0) * W), rows * W, reinterpret_cast<uint16_t*>(x_rows.data()));
        } else {
          std::copy(x + (t * N + r0) * W, x + (t * N + r0 + rows) * W, x_rows.data());
        }
        into_a_panel(bits_of(h_rows.data()), H, H, slot, a_h.data());
        into_a_panel(bits_of(x_rows.data()), W, W, slot, a_x.data());
        into_b_panel(bits_of(d.data()), G, slot, b_h.data());
        into_b_panel(bits_of(g.data()), G, slot, b_x.data());
        tile_product(bits_of(g.data()), wi_packed, dx_rows.data(), G, W, G);
        for (int64_t i = 0; i < rows; ++i) {
          c10::BFloat16* dx_row = dx + (t * N + r0 + i) * W;
          store_row(dx_rows.data() + i * W, dx_row, W);
          if (relu_x) keep_where_positive(bits_of(x + (t * N + r0 + i) * W), W, reinterpret_cast<uint16_t*>(dx_row));
        }
        if (slot == kPanelSteps - 1 || t == 0) {
          for (int64_t rest = slot + 1; rest < kPanelSteps; ++rest) {  // the last panel: its unused slots
            std::fill(h_rows.begin(), h_rows.end(), c10::BFloat16(0.0f));
            std::fill(x_rows.begin(), x_rows.end(), c10::BFloat16(0.0f));
            into_a_panel(bits_of(h_rows.data()), H, H, rest, a_h.data());
            into_a_panel(bits_of(x_rows.data()), W, W, rest, a_x.data());
          }
          accumulate_panel(a_h.data(), H, b_h.data(), G, my_hh);
          accumulate_panel(a_x.data(), W, b_x.data(), G, my_ih);
        }
      }
      tile_product(bits_of(d.data()), wh_packed, rec.data(), G, H, G);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < H; ++j) dh0[(r0 + i) * H + j] = carry[i * H + j] + rec[i * H + j];
    }
    _tile_release();
  });
}

// One acting step of the whole agent network, 16 rows at a time: x = relu(inputs W1^T + b1), the GRU
// cell, q = h' W2^T + b2. Products on the tiles in bf16 (inputs and states rounded to bf16 for them),
// everything else fp32. Weights as `pack_pairs` lays them out (W1^T padded to in_pad rows, W2^T to
// A_pad columns, both multiples of 32).
void agent_step_amx(const float* inputs, int64_t in, int64_t in_pad, const float* hidden, const uint16_t* w1,
                    const float* b1, const uint16_t* wi, const float* b_ih, const uint16_t* wh, const float* b_hh,
                    const uint16_t* w2, const float* b2, int64_t A, int64_t A_pad, float* q, float* h_out, int64_t R,
                    int64_t W, int64_t H) {
  const int64_t P = 4 * H;
  const std::vector<float> init = gate_init(b_ih, b_hh, H);
  std::vector<float> init1(kBlock * W), init2(kBlock * A_pad, 0.0f);
  for (int64_t i = 0; i < kBlock; ++i) {
    std::copy(b1, b1 + W, init1.data() + i * W);
    std::copy(b2, b2 + A, init2.data() + i * A_pad);
  }
  at::parallel_for(0, (R + kBlock - 1) / kBlock, 1, [&](int64_t first, int64_t last) {
    configure_tiles();
    std::vector<float> a1(kBlock * W), pre(kBlock * P), h(kBlock * H), rz(2 * H), n(H), out(kBlock * A_pad);
    std::vector<c10::BFloat16> in_rows(kBlock * in_pad), x(kBlock * W), h_mm(kBlock * H);
    for (int64_t block = first; block < last; ++block) {
      const int64_t r0 = block * kBlock, rows = std::min(kBlock, R - r0);
      std::fill(in_rows.begin(), in_rows.end(), c10::BFloat16(0.0f));  // padding columns and rows past R
      std::fill(h.begin(), h.end(), 0.0f);
      for (int64_t i = 0; i < rows; ++i) {
        store_row(inputs + (r0 + i) * in, in_rows.data() + i * in_pad, in);
        std::copy(hidden + (r0 + i) * H, hidden + (r0 + i + 1) * H, h.data() + i * H);
      }
      for (int64_t i = 0; i < kBlock; ++i) store_row(h.data() + i * H, h_mm.data() + i * H, H);
      for (int64_t mc = 0; mc < W / 16; mc += 2)
        pair_product(init1.data() + 16 * mc, W, bits_of(in_rows.data()), in_pad, w1, in_pad, nullptr, 0, nullptr, 0,
                     W / 16, mc, a1.data() + 16 * mc, W);
      for (int64_t i = 0; i < kBlock; ++i) {
        float* row = a1.data() + i * W;
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) row[j] = std::max(row[j], 0.0f);
        store_row(row, x.data() + i * W, W);
      }
      gate_products(init.data(), bits_of(x.data()), W, wi, bits_of(h_mm.data()), wh, H, pre.data());
      for (int64_t i = 0; i < rows; ++i) {
        float* h_row = h.data() + i * H;
        gate_row(pre.data() + i * P, rz.data(), n.data(), h_row, H);
        std::copy(h_row, h_row + H, h_out + (r0 + i) * H);
        store_row(h_row, h_mm.data() + i * H, H);
      }
      for (int64_t mc = 0; mc < A_pad / 16; mc += 2)
        pair_product(init2.data() + 16 * mc, A_pad, bits_of(h_mm.data()), H, w2, H, nullptr, 0, nullptr, 0,
                     A_pad / 16, mc, out.data() + 16 * mc, A_pad);
      for (int64_t i = 0; i < rows; ++i) {
        std::copy(out.data() + i * A_pad, out.data() + i * A_pad + A, q + (r0 + i) * A);
      }
    }
    _tile_release();
  });
}
#endif

template <typename T>
T* ptr(const at::Tensor& t) { return t.data_ptr<T>(); }

}  // namespace

// Whether this build and process can run the recurrence on AMX tiles (the products then need bf16
// and a hidden size that is a multiple of 32).
bool amx_available() { return amx_permitted(); }

// The kernel's e^x for x (fp32, any shape), for its test against std::exp.
at::Tensor exp_for_test(at::Tensor x) {
  at::Tensor y = at::empty_like(x);
  const float* in = x.contiguous().data_ptr<float>();
  float* out = y.data_ptr<float>();
  for (int64_t i = 0; i < x.numel(); ++i) out[i] = exp_inline(in[i]);
  return y;
}

// What a forward returns, and the backward reads: h_0..h_T in fp32 (only h_0 without save: the
// states are kept for the backward alone) and in the products' dtype (the same tensor for fp32; its
// h_1..h_T are the output), gh's n part [T, N, H] and the gates rz [T, N, 2H], n [T, N, H] (one step's
// scratch without save).
struct ForwardState {
  at::Tensor hs, hs_mm, gh_n, rz, n;

  ForwardState(const at::Tensor& h0, int64_t T, int64_t N, int64_t H, at::ScalarType mm, bool save,
               bool fp32_states_always) {
    auto f32 = h0.options().dtype(at::kFloat);
    auto mmo = h0.options().dtype(mm);
    hs = at::empty({save || fp32_states_always ? T + 1 : 1, N, H}, f32);
    hs[0].copy_(h0);
    hs_mm = mm == at::kFloat ? hs : at::empty({T + 1, N, H}, mmo);
    if (mm != at::kFloat) hs_mm[0].copy_(h0);
    const int64_t keep = save ? T : 1;
    if (save) gh_n = at::empty({T, N, H}, mmo);
    rz = at::empty({keep, N, 2 * H}, f32);
    n = at::empty({keep, N, H}, f32);
  }

  std::vector<at::Tensor> outputs(bool save) const {
    if (!save) return {hs, hs_mm, at::Tensor(), at::Tensor(), at::Tensor()};
    return {hs, hs_mm, gh_n, rz, n};
  }
};

// gi [T, N, 3H] = x @ W_ih^T without its bias (fp32 or bf16), h0 [N, H] fp32, w_t = W_hh^T [H, 3H]
// in the matrix products' dtype (fp32 or bf16), b_ih and b = b_hh [3H] fp32. save: keep what the
// backward needs. Returns {hs, hs_mm, gh_n, rz, n} (see ForwardState); without save the last three
// are empty.
std::vector<at::Tensor> gru_forward(at::Tensor gi, at::Tensor h0, at::Tensor w_t, at::Tensor b_ih, at::Tensor b,
                                    bool save) {
  TORCH_CHECK(gi.dim() == 3 && gi.is_contiguous() && !gi.is_cuda(), "gi must be a contiguous CPU [T, N, 3H]");
  TORCH_CHECK(h0.scalar_type() == at::kFloat && h0.is_contiguous(), "h0 must be contiguous fp32");
  TORCH_CHECK(b.scalar_type() == at::kFloat && b.is_contiguous(), "b_hh must be contiguous fp32");
  TORCH_CHECK(b_ih.scalar_type() == at::kFloat && b_ih.is_contiguous(), "b_ih must be contiguous fp32");
  const int64_t T = gi.size(0), N = gi.size(1), H = gi.size(2) / 3;
  const auto mm = w_t.scalar_type();
  const bool separate_mm = mm != at::kFloat;
  // This path reads h_t in fp32 from hs at every step, so it keeps them all even without save.
  ForwardState state(h0, T, N, H, mm, save, /*fp32_states_always=*/true);
  at::Tensor &hs = state.hs, &hs_mm = state.hs_mm, &gh_n = state.gh_n, &rz = state.rz, &n = state.n;
  at::Tensor gh = at::empty({N, 3 * H}, gi.options().dtype(mm));
  for (int64_t t = 0; t < T; ++t) {
    const int64_t s = save ? t : 0;
    at::mm_out(gh, hs_mm[t], w_t);  // this step's h @ W_hh^T (b_hh added in the gates)
    dispatch(gi.scalar_type(), [&](auto ti) {
      using TI = decltype(ti);
      dispatch(mm, [&](auto tm) {
        using TM = decltype(tm);
        forward_gates<TI, TM>(ptr<TI>(gi[t]), ptr<TM>(gh), ptr<float>(b_ih), ptr<float>(b), ptr<float>(hs[t]),
                              ptr<float>(rz[s]),
                              ptr<float>(n[s]), ptr<float>(hs[t + 1]),
                              separate_mm ? ptr<TM>(hs_mm[t + 1]) : nullptr,
                              save ? ptr<TM>(gh_n[t]) : nullptr, N, H);
      });
    });
  }
  return state.outputs(save);
}

// The forward on AMX tiles, input projection included: x [T, N, W] bf16 (W a multiple of 32; the
// recurrence reads relu(x) with relu_x), h0 [N, H] fp32, wi_t = W_ih^T [W, 3H] and wh_t = W_hh^T [H, 3H]
// in bf16 (H a multiple of 32), the biases fp32. Returns what gru_forward returns, for the same backward.
std::vector<at::Tensor> gru_forward_tiles(at::Tensor x, bool relu_x, at::Tensor h0, at::Tensor wi_t,
                                          at::Tensor wh_t, at::Tensor b_ih, at::Tensor b, bool save) {
  const int64_t T = x.size(0), N = x.size(1), W = x.size(2), H = wh_t.size(0);
  TORCH_CHECK(amx_permitted(), "no AMX tiles in this build or process");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.is_contiguous() && W % 32 == 0 && H % 32 == 0,
              "x must be contiguous bf16 [T, N, W], W and H multiples of 32");
  TORCH_CHECK(h0.scalar_type() == at::kFloat && h0.is_contiguous(), "h0 must be contiguous fp32");
  ForwardState state(h0, T, N, H, at::kBFloat16, save, /*fp32_states_always=*/false);
#if OVMSE_AMX
  const std::vector<uint16_t> wi_packed = pack_pairs(wi_t.contiguous()), wh_packed = pack_pairs(wh_t.contiguous());
  forward_amx(ptr<c10::BFloat16>(x), W, relu_x, wi_packed.data(), ptr<float>(h0), wh_packed.data(),
              ptr<float>(b_ih.contiguous()), ptr<float>(b.contiguous()), ptr<float>(state.hs),
              ptr<c10::BFloat16>(state.hs_mm), save ? ptr<c10::BFloat16>(state.gh_n) : nullptr, ptr<float>(state.rz),
              ptr<float>(state.n), save, T, N, H);
#endif
  return state.outputs(save);
}

// Bias gradients from the summed rows [dgh_r, dgh_z, dgh_n, dgi_n]: {db_hh, db_ih} (b_ih's is gi's
// column sums, whose r and z parts are gh's).
std::vector<at::Tensor> bias_gradients(const at::Tensor& bias_sums, int64_t H) {
  at::Tensor sums = bias_sums.sum(0);
  return {sums.narrow(0, 0, 3 * H), at::cat({sums.narrow(0, 0, 2 * H), sums.narrow(0, 3 * H, H)})};
}

// dout [T, N, H] (dL/dh_1..h_T, in the products' dtype); the saved tensors of gru_forward; w = W_hh [3H, H] in the
// products' dtype; gi_dtype_like: a tensor of gi's dtype. Returns {dgi, dh0, dw_hh, db_hh, db_ih},
// the gradients of the weights in fp32.
std::vector<at::Tensor> gru_backward(at::Tensor dout, at::Tensor hs, at::Tensor hs_mm, at::Tensor gh_n,
                                     at::Tensor rz, at::Tensor n, at::Tensor w, at::Tensor gi_dtype_like) {
  const int64_t T = dout.size(0), N = dout.size(1), H = dout.size(2);
  const auto mm = w.scalar_type();
  TORCH_CHECK(dout.scalar_type() == mm && dout.is_contiguous(), "dout must be contiguous, in the products' dtype");
  at::Tensor dgh = at::empty({T, N, 3 * H}, gh_n.options());
  at::Tensor dgi = at::empty({T, N, 3 * H}, gi_dtype_like.options());
  auto f32 = dout.options().dtype(at::kFloat);
  at::Tensor bias_sums = at::zeros({N, 4 * H}, f32);
  at::Tensor carry = at::zeros({N, H}, f32);
  at::Tensor recurrent = at::empty({N, H}, gh_n.options());
  for (int64_t t = T - 1; t >= 0; --t) {
    dispatch(gi_dtype_like.scalar_type(), [&](auto ti) {
      using TI = decltype(ti);
      dispatch(mm, [&](auto tm) {
        using TM = decltype(tm);
        backward_gates<TI, TM>(ptr<TM>(dout[t]), ptr<float>(carry), t == T - 1 ? nullptr : ptr<TM>(recurrent),
                               ptr<float>(rz[t]), ptr<float>(n[t]), ptr<TM>(gh_n[t]), ptr<float>(hs[t]),
                               ptr<TM>(dgh[t]), ptr<TI>(dgi[t]), ptr<float>(bias_sums), N, H);
      });
    });
    at::mm_out(recurrent, dgh[t], w);  // dgh_t @ W_hh: the part of dL/dh_t through the products
  }
  at::Tensor dh0 = carry + recurrent.to(at::kFloat);
  // h^T @ dgh, then transposed: faster than dgh^T @ h (measured 5.7 against 7.9 ms at T N = 82,944).
  at::Tensor dw = at::mm(hs_mm.narrow(0, 0, T).reshape({T * N, H}).t(), dgh.view({T * N, 3 * H}));
  const auto biases = bias_gradients(bias_sums, H);
  return {dgi, dh0, dw.t().to(at::kFloat), biases[0], biases[1]};
}

// The backward of gru_forward_tiles, on the tiles: dout [T, N, H] bf16, the forward's saved tensors, x
// and relu_x and the weights w_ih [3H, W], w_hh [3H, H] (bf16) as the forward used them. Returns {dx,
// dh0, dw_ih, db_ih, dw_hh, db_hh}: dx (the gradient of x itself, relu's backward included) in bf16,
// the rest fp32.
std::vector<at::Tensor> gru_backward_tiles(at::Tensor dout, at::Tensor hs, at::Tensor hs_mm, at::Tensor gh_n,
                                           at::Tensor rz, at::Tensor n, at::Tensor x, bool relu_x,
                                           at::Tensor w_ih, at::Tensor w_hh) {
  const int64_t T = dout.size(0), N = dout.size(1), H = dout.size(2), W = x.size(2);
  TORCH_CHECK(amx_permitted(), "no AMX tiles in this build or process");
  TORCH_CHECK(dout.scalar_type() == at::kBFloat16 && dout.is_contiguous(), "dout must be contiguous bf16");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.is_contiguous() && W % 32 == 0 && H % 32 == 0,
              "x must be contiguous bf16 [T, N, W], W and H multiples of 32");
  auto f32 = dout.options().dtype(at::kFloat);
  const int64_t threads = at::get_num_threads();
  at::Tensor dx = at::empty_like(x);
  at::Tensor dh0 = at::empty({N, H}, f32);
  at::Tensor acc_hh = at::zeros({threads, H, 3 * H}, f32), acc_ih = at::zeros({threads, W, 3 * H}, f32);
  at::Tensor bias_sums = at::zeros({(N + 15) / 16, 4 * H}, f32);
#if OVMSE_AMX
  const std::vector<uint16_t> wh_packed = pack_pairs(w_hh.contiguous()), wi_packed = pack_pairs(w_ih.contiguous());
  backward_amx(ptr<c10::BFloat16>(dout), ptr<float>(hs), ptr<c10::BFloat16>(hs_mm), ptr<float>(rz), ptr<float>(n),
               ptr<c10::BFloat16>(gh_n), ptr<c10::BFloat16>(x), W, relu_x, wh_packed.data(), wi_packed.data(),
               ptr<c10::BFloat16>(dx), ptr<float>(acc_hh), ptr<float>(acc_ih), ptr<float>(bias_sums),
               ptr<float>(dh0), T, N, H);
#endif
  const auto biases = bias_gradients(bias_sums, H);
  return {dx, dh0, acc_ih.sum(0).t().contiguous(), biases[1], acc_hh.sum(0).t().contiguous(), biases[0]};
}

// ---------------------------------------------------------------------------------------------------
// The actors' one-step forward on AMX tiles (see agent_step_amx). pack_for_tiles: a weight W [M, K]
// (nn.Linear's layout, fp32) as the tiles read W^T [K, M] in bf16, K padded to a multiple of 32 and M
// to `m_pad` (a multiple of 32) with zeros; bf16 bits in a bf16 tensor.
at::Tensor pack_for_tiles(at::Tensor w, int64_t m_pad) {
  const int64_t M = w.size(0), K = w.size(1);
  TORCH_CHECK(m_pad >= M && m_pad % 32 == 0, "m_pad must cover the rows and be a multiple of 32");
  at::Tensor wt = at::zeros({(K + 31) / 32 * 32, m_pad}, w.options().dtype(at::kBFloat16));
  wt.narrow(0, 0, K).narrow(1, 0, M).copy_(w.t());
  at::Tensor out = at::empty({wt.numel()}, wt.options());
#if OVMSE_AMX
  const std::vector<uint16_t> packed = pack_pairs(wt);
  std::memcpy(out.data_ptr(), packed.data(), packed.size() * sizeof(uint16_t));
#else
  TORCH_CHECK(false, "no AMX tiles in this build");
#endif
  return out;
}

// inputs [R, in] and hidden [R, H] fp32; the weights from pack_for_tiles (w1 with m_pad = W, w_ih and
// w_hh with 3H, w2 with A_pad) and the fp32 biases. Returns {q [R, A], h' [R, H]} fp32.
std::vector<at::Tensor> agent_step_tiles(at::Tensor inputs, at::Tensor hidden, at::Tensor w1, at::Tensor b1,
                                         at::Tensor w_ih, at::Tensor b_ih, at::Tensor w_hh, at::Tensor b_hh,
                                         at::Tensor w2, at::Tensor b2) {
  TORCH_CHECK(amx_permitted(), "no AMX tiles in this build or process");
  TORCH_CHECK(inputs.scalar_type() == at::kFloat && inputs.is_contiguous() && inputs.dim() == 2,
              "inputs must be contiguous fp32 [R, in]");
  TORCH_CHECK(hidden.scalar_type() == at::kFloat && hidden.is_contiguous(), "hidden must be contiguous fp32");
  const int64_t R = inputs.size(0), in = inputs.size(1), H = hidden.size(1), W = b1.size(0), A = b2.size(0);
  const int64_t in_pad = (in + 31) / 32 * 32, A_pad = (A + 31) / 32 * 32;
  TORCH_CHECK(W % 32 == 0 && H % 32 == 0, "the tiles need layer widths that are multiples of 32");
  TORCH_CHECK(w1.numel() == in_pad * W && w_ih.numel() == W * 3 * H && w_hh.numel() == H * 3 * H &&
                  w2.numel() == H * A_pad,
              "packed weights of the wrong size for these inputs");
  at::Tensor q = at::empty({R, A}, inputs.options());
  at::Tensor h = at::empty({R, H}, inputs.options());
#if OVMSE_AMX
  auto bits = [](const at::Tensor& t) { return bits_of(t.data_ptr<c10::BFloat16>()); };
  agent_step_amx(ptr<float>(inputs), in, in_pad, ptr<float>(hidden), bits(w1), ptr<float>(b1.contiguous()), bits(w_ih),
                 ptr<float>(b_ih.contiguous()), bits(w_hh), ptr<float>(b_hh.contiguous()), bits(w2),
                 ptr<float>(b2.contiguous()), A, A_pad, ptr<float>(q), ptr<float>(h), R, W, H);
#endif
  return {q, h};
}

// ---------------------------------------------------------------------------------------------------
// The library's Python bindings: every function of kernels.h, this file's and batch_kernels.cpp's
// (torch's error handling around each, as torch's inline builder binds them).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gru_forward", torch::wrap_pybind_function(gru_forward), "gru_forward");
  m.def("gru_forward_tiles", torch::wrap_pybind_function(gru_forward_tiles), "gru_forward_tiles");
  m.def("gru_backward", torch::wrap_pybind_function(gru_backward), "gru_backward");
  m.def("gru_backward_tiles", torch::wrap_pybind_function(gru_backward_tiles), "gru_backward_tiles");
  m.def("amx_available", torch::wrap_pybind_function(amx_available), "amx_available");
  m.def("exp_for_test", torch::wrap_pybind_function(exp_for_test), "exp_for_test");
  m.def("double_q_values", torch::wrap_pybind_function(double_q_values), "double_q_values");
  m.def("pack_for_tiles", torch::wrap_pybind_function(pack_for_tiles), "pack_for_tiles");
  m.def("agent_step_tiles", torch::wrap_pybind_function(agent_step_tiles), "agent_step_tiles");
  m.def("mix_samples_forward", torch::wrap_pybind_function(mix_samples_forward), "mix_samples_forward");
  m.def("mix_samples_backward", torch::wrap_pybind_function(mix_samples_backward), "mix_samples_backward");
  m.def("agent_inputs", torch::wrap_pybind_function(agent_inputs), "agent_inputs");
}
