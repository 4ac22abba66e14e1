// A GRU recurrence for CPU training: the whole unroll (forward and backward) in one call, with the
// gate math of each step fused into one pass over [N, H] (fp32, vectorised by the compiler) and the
// matrix products in the inputs' dtype (bf16 for the matrix units, or fp32). Where the build targets
// a CPU with AMX tiles, a bf16 unroll runs 16 rows at a time through every step instead, each step's
// h @ W_hh^T on the tiles (fp32 out) feeding the gates directly, with no call into torch per step.
//
// Why: with nn.GRU or autograd ops, each step's gate math is ~20 separate elementwise passes (and,
// under bf16 autocast, runs in bf16, which CPUs compute slowly); those passes, not the products,
// bounded the learner. Built at first use by common/fused_gru.py, which also holds the Python side.
//
// Gates (PyTorch's nn.GRU, r, z, n along the 3H axis):
//   r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z), n = tanh(gi_n + r * gh_n),
//   h' = n + z * (h - n),   gh = h @ W_hh^T + b_hh.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

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

// e^x inline, so that the gate loops vectorise without a call per vector: e^x = 2^k 2^f with
// k = round(x log2(e)), |f| <= 1/2, and 2^f by its Taylor series to f^6 (relative error below 2e-6,
// about fp32's rounding; tested against std::exp). Arguments are clamped to [-87, 88], where e^x
// stays a normal float.
inline float exp_inline(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float t = x * 1.4426950408889634f;  // log2(e)
  const float k = std::floor(t + 0.5f);
  const float f = t - k;
  float p = 1.5403530393381606e-4f;  // ln(2)^6 / 6!, then down to ln(2)^1 / 1!
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  const int32_t exponent = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &exponent, sizeof(scale));
  return p * scale;
}
inline float sigmoid(float x) { return 1.0f / (1.0f + exp_inline(-x)); }
// tanh through exp keeps one transcendental for all three gates.
inline float tanh_by_exp(float x) { return 2.0f / (1.0f + exp_inline(-2.0f * x)) - 1.0f; }

constexpr int64_t kGrain = 64;  // rows per parallel chunk

// Rows move between the tensors' dtype and fp32 scratch in plain loops the compiler vectorises
// (bf16 is the top half of an fp32; stores round to nearest even, as torch does for finite values).
inline void load_row(const float* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = src[j];
}
inline void load_row(const c10::BFloat16* src, float* dst, int64_t n) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
  uint32_t* out = reinterpret_cast<uint32_t*>(dst);
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<uint32_t>(bits[j]) << 16;
}
inline void store_row(const float* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = src[j];
}
inline void store_row(const float* src, c10::BFloat16* dst, int64_t n) {
  const uint32_t* in = reinterpret_cast<const uint32_t*>(src);
  uint16_t* bits = reinterpret_cast<uint16_t*>(dst);
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t x = in[j];
    bits[j] = static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
  }
}

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

// out [16, M] fp32 = a [16, K] (bf16 bits, rows `a_stride` elements apart) @ B [K, M] (as `pack_pairs`
// lays it out); K and M multiples of 32.
inline void tile_product(const uint16_t* a, const uint16_t* packed, float* out, int64_t K, int64_t M,
                         int64_t a_stride) {
  const int64_t k_chunks = K / 32, m_chunks = M / 16;
  for (int64_t mc = 0; mc < m_chunks; mc += 2) {
    _tile_zero(0);
    _tile_zero(1);
    for (int64_t kc = 0; kc < k_chunks; ++kc) {
      _tile_loadd(2, a + 32 * kc, a_stride * 2);
      _tile_loadd(3, packed + (kc * m_chunks + mc) * 512, 64);
      _tile_loadd(4, packed + (kc * m_chunks + mc + 1) * 512, 64);
      _tile_dpbf16ps(0, 2, 3);
      _tile_dpbf16ps(1, 2, 4);
    }
    _tile_stored(0, out + 16 * mc, M * 4);
    _tile_stored(1, out + 16 * (mc + 1), M * 4);
  }
}

inline const uint16_t* bits_of(const c10::BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); }

// The forward unroll on AMX: each block of 16 rows runs every step with its state in local buffers.
// Both products come out of the tiles in fp32 and go straight into the gate math: gi = x @ W_ih^T
// (so the [T, N, 3H] input projection is never stored) and gh = h @ W_hh^T.
void forward_amx(const c10::BFloat16* x, int64_t width, const uint16_t* wi_packed, const float* h0,
                 const uint16_t* wh_packed, const float* b_ih, const float* b_hh, float* hs, c10::BFloat16* hs_mm,
                 c10::BFloat16* gh_n, float* rz, float* n, bool save, int64_t T, int64_t N, int64_t H) {
  at::parallel_for(0, (N + kBlock - 1) / kBlock, 1, [&](int64_t first, int64_t last) {
    configure_tiles();
    std::vector<float> h(kBlock * H), gi(kBlock * 3 * H), gh(kBlock * 3 * H), scratch(6 * H);
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
        if (rows < kBlock) {  // a partial block: the tile would read past this step's rows
          std::copy(x_rows, x_rows + rows * width, x_tail.data());
          x_rows = x_tail.data();
        }
        tile_product(bits_of(x_rows), wi_packed, gi.data(), width, 3 * H, width);
        tile_product(bits_of(h_mm.data()), wh_packed, gh.data(), H, 3 * H, H);
        const int64_t s = save ? t : 0;
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t row = r0 + i;
          float* h_row = h.data() + i * H;  // h_t in, h_{t+1} out
          c10::BFloat16* out_mm = hs_mm + ((t + 1) * N + row) * H;
          forward_row<float, float, c10::BFloat16>(gi.data() + i * 3 * H, gh.data() + i * 3 * H, b_ih, b_hh,
                                                   h_row, rz + (s * N + row) * 2 * H, n + (s * N + row) * H,
                                                   h_row, out_mm, save ? gh_n + (t * N + row) * H : nullptr,
                                                   scratch.data(), H);
          if (save) std::copy(h_row, h_row + H, hs + ((t + 1) * N + row) * H);  // the backward's h_t
          std::memcpy(h_mm.data() + i * H, out_mm, H * sizeof(c10::BFloat16));
        }
      }
    }
    _tile_release();
  });
}

// The backward unroll on AMX, 16 rows at a time: dgh_{t+1} @ W_hh from the tiles feeds step t's gates.
// Writes dgh, dgi, dh0 = dL/dh_0 and the bias sums, one row of bias_sums per block (it stays in cache).
template <typename TI>
void backward_amx(const c10::BFloat16* dout, const float* hs, const float* rz, const float* n,
                  const c10::BFloat16* gh_n, const uint16_t* w_packed, c10::BFloat16* dgh, TI* dgi,
                  float* bias_sums, float* dh0, int64_t T, int64_t N, int64_t H) {
  at::parallel_for(0, (N + kBlock - 1) / kBlock, 1, [&](int64_t first, int64_t last) {
    configure_tiles();
    std::vector<float> carry(kBlock * H), rec(kBlock * H), scratch(7 * H);
    std::vector<c10::BFloat16> d(kBlock * 3 * H);  // this block's dgh of the step after
    for (int64_t block = first; block < last; ++block) {
      const int64_t r0 = block * kBlock, rows = std::min(kBlock, N - r0);
      std::fill(carry.begin(), carry.end(), 0.0f);
      std::fill(d.begin(), d.end(), c10::BFloat16(0.0f));
      for (int64_t t = T - 1; t >= 0; --t) {
        if (t < T - 1) tile_product(bits_of(d.data()), w_packed, rec.data(), 3 * H, H, 3 * H);
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t row = r0 + i, at = t * N + row;
          backward_row<TI, c10::BFloat16, float>(dout + at * H, carry.data() + i * H,
                                                 t < T - 1 ? rec.data() + i * H : nullptr, rz + at * 2 * H,
                                                 n + at * H, gh_n + at * H, hs + at * H, dgh + at * 3 * H,
                                                 dgi + at * 3 * H, bias_sums + block * 4 * H, scratch.data(), H);
          std::memcpy(d.data() + i * 3 * H, dgh + at * 3 * H, 3 * H * sizeof(c10::BFloat16));
        }
      }
      tile_product(bits_of(d.data()), w_packed, rec.data(), 3 * H, H, 3 * H);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < H; ++j) dh0[(r0 + i) * H + j] = carry[i * H + j] + rec[i * H + j];
    }
    _tile_release();
  });
}
#endif

template <typename T>
T* ptr(const at::Tensor& t) { return t.data_ptr<T>(); }

// Calls f with a value of the C++ type of `type`: fp32 or bf16, nothing else.
template <typename F>
void dispatch(at::ScalarType type, F&& f) {
  if (type == at::kFloat) {
    f(float{});
  } else if (type == at::kBFloat16) {
    f(c10::BFloat16{});
  } else {
    TORCH_CHECK(false, "the fused GRU takes fp32 or bf16, got ", type);
  }
}

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

inline bool runs_on_amx(bool use_amx, at::ScalarType mm, int64_t H) {
  return use_amx && mm == at::kBFloat16 && H % 32 == 0 && amx_permitted();
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

// The forward on AMX tiles, input projection included: x [T, N, W] bf16 (W a multiple of 32), h0 [N, H]
// fp32, wi_t = W_ih^T [W, 3H] and wh_t = W_hh^T [H, 3H] in bf16 (H a multiple of 32), the biases fp32.
// Returns what gru_forward returns, for the same backward.
std::vector<at::Tensor> gru_forward_tiles(at::Tensor x, at::Tensor h0, at::Tensor wi_t, at::Tensor wh_t,
                                          at::Tensor b_ih, at::Tensor b, bool save) {
  const int64_t T = x.size(0), N = x.size(1), W = x.size(2), H = wh_t.size(0);
  TORCH_CHECK(amx_permitted(), "no AMX tiles in this build or process");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.is_contiguous() && W % 32 == 0 && H % 32 == 0,
              "x must be contiguous bf16 [T, N, W], W and H multiples of 32");
  TORCH_CHECK(h0.scalar_type() == at::kFloat && h0.is_contiguous(), "h0 must be contiguous fp32");
  ForwardState state(h0, T, N, H, at::kBFloat16, save, /*fp32_states_always=*/false);
#if OVMSE_AMX
  const std::vector<uint16_t> wi_packed = pack_pairs(wi_t.contiguous()), wh_packed = pack_pairs(wh_t.contiguous());
  forward_amx(ptr<c10::BFloat16>(x), W, wi_packed.data(), ptr<float>(h0), wh_packed.data(),
              ptr<float>(b_ih.contiguous()), ptr<float>(b.contiguous()), ptr<float>(state.hs),
              ptr<c10::BFloat16>(state.hs_mm), save ? ptr<c10::BFloat16>(state.gh_n) : nullptr, ptr<float>(state.rz),
              ptr<float>(state.n), save, T, N, H);
#endif
  return state.outputs(save);
}

// dout [T, N, H] (dL/dh_1..h_T, in the products' dtype); the saved tensors of gru_forward; w = W_hh [3H, H] in the
// products' dtype; gi_dtype_like: a tensor of gi's dtype. Returns {dgi, dh0, dw_hh, db_hh, db_ih},
// the bias gradients in fp32 (b_ih's is gi's column sums).
std::vector<at::Tensor> gru_backward(at::Tensor dout, at::Tensor hs, at::Tensor hs_mm, at::Tensor gh_n,
                                     at::Tensor rz, at::Tensor n, at::Tensor w, at::Tensor gi_dtype_like,
                                     bool use_amx) {
  const int64_t T = dout.size(0), N = dout.size(1), H = dout.size(2);
  const auto mm = w.scalar_type();
  TORCH_CHECK(dout.scalar_type() == mm && dout.is_contiguous(), "dout must be contiguous, in the products' dtype");
  at::Tensor dgh = at::empty({T, N, 3 * H}, gh_n.options());
  at::Tensor dgi = at::empty({T, N, 3 * H}, gi_dtype_like.options());
  auto f32 = dout.options().dtype(at::kFloat);
  at::Tensor bias_sums = at::zeros({N, 4 * H}, f32);
  at::Tensor dh0;
#if OVMSE_AMX
  if (runs_on_amx(use_amx, mm, H)) {
    const std::vector<uint16_t> packed = pack_pairs(w.contiguous());
    dh0 = at::empty({N, H}, f32);
    dispatch(gi_dtype_like.scalar_type(), [&](auto ti) {
      using TI = decltype(ti);
      backward_amx<TI>(ptr<c10::BFloat16>(dout), ptr<float>(hs), ptr<float>(rz), ptr<float>(n),
                       ptr<c10::BFloat16>(gh_n), packed.data(), ptr<c10::BFloat16>(dgh), ptr<TI>(dgi),
                       ptr<float>(bias_sums), ptr<float>(dh0), T, N, H);
    });
  }
#endif
  if (!dh0.defined()) {  // the per-step products through torch (fp32, or no AMX)
    at::Tensor carry = at::zeros({N, H}, f32);
    at::Tensor recurrent = at::empty({N, H}, gh_n.options());
    for (int64_t t = T - 1; t >= 0; --t) {
      dispatch(gi_dtype_like.scalar_type(), [&](auto ti) {
        using TI = decltype(ti);
        dispatch(mm, [&](auto tm) {
          using TM = decltype(tm);
          backward_gates<TI, TM>(ptr<TM>(dout[t]), ptr<float>(carry),
                                 t == T - 1 ? nullptr : ptr<TM>(recurrent), ptr<float>(rz[t]), ptr<float>(n[t]),
                                 ptr<TM>(gh_n[t]), ptr<float>(hs[t]), ptr<TM>(dgh[t]), ptr<TI>(dgi[t]),
                                 ptr<float>(bias_sums), N, H);
        });
      });
      at::mm_out(recurrent, dgh[t], w);  // dgh_t @ W_hh: the part of dL/dh_t through the products
    }
    dh0 = carry + recurrent.to(at::kFloat);
  }
  at::Tensor flat = dgh.view({T * N, 3 * H});
  at::Tensor dw = at::mm(flat.t(), hs_mm.narrow(0, 0, T).reshape({T * N, H})).to(at::kFloat);
  at::Tensor sums = bias_sums.sum(0);  // [dgh_r, dgh_z, dgh_n, dgi_n] summed over steps and rows
  at::Tensor db_hh = sums.narrow(0, 0, 3 * H);
  at::Tensor db_ih = at::cat({sums.narrow(0, 0, 2 * H), sums.narrow(0, 3 * H, H)});
  return {dgi, dh0, dw, db_hh, db_ih};
}
