// A GRU recurrence for CPU training: the whole unroll (forward and backward) in one call, with the
// gate math of each step fused into one pass over [N, H] (fp32, vectorised by the compiler) and the
// matrix products in the inputs' dtype (bf16 for the matrix units, or fp32).
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

#include <cmath>
#include <vector>

namespace {

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
// tanh through exp keeps one vectorised transcendental (libmvec's expf) for all three gates.
inline float tanh_by_exp(float x) { return 2.0f / (1.0f + std::exp(-2.0f * x)) - 1.0f; }

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

// One forward step for rows [begin, end): writes rz, n, h_next (fp32) and h_next_mm (mm dtype).
template <typename TI, typename TM>
void forward_gates(const TI* gi, const TM* gh, const float* b_ih, const float* b_hh, const float* h, float* rz,
                   float* n,
                   float* h_next, TM* h_next_mm, TM* ghn_out, int64_t N, int64_t H) {
  at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(6 * H);
    float* a = scratch.data();  // gi row, fp32
    float* g = a + 3 * H;       // gh row, fp32
    for (int64_t i = begin; i < end; ++i) {
      load_row(gi + i * 3 * H, a, 3 * H);
      load_row(gh + i * 3 * H, g, 3 * H);
#pragma omp simd
      for (int64_t j = 0; j < 3 * H; ++j) {  // the biases here: addmm's bias add costs more than this
        a[j] += b_ih[j];
        g[j] += b_hh[j];
      }
      const float* h_row = h + i * H;
      float* rz_row = rz + i * 2 * H;
      float* n_row = n + i * H;
      float* out_row = h_next + i * H;
#pragma omp simd
      for (int64_t j = 0; j < 2 * H; ++j) rz_row[j] = sigmoid(a[j] + g[j]);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const float nn = tanh_by_exp(a[2 * H + j] + rz_row[j] * g[2 * H + j]);
        n_row[j] = nn;
        out_row[j] = nn + rz_row[H + j] * (h_row[j] - nn);
      }
      if (h_next_mm != nullptr) store_row(out_row, h_next_mm + i * H, H);
      if (ghn_out != nullptr) store_row(g + 2 * H, ghn_out + i * H, H);
    }
  });
}

// One backward step. g = dout + carry + (dgh_{t+1} @ W_hh) is dL/dh_{t+1}; writes dgh (mm dtype),
// dgi (gi dtype) and carry = g * z (the part of dL/dh_t that skips the products), and adds each
// row's dgh and dgi_n to bias_sums [N, 4H] (fp32; summed over rows at the end: the biases' grads).
template <typename TI, typename TM>
void backward_gates(const TM* dout, float* carry, const TM* recurrent, const float* rz, const float* n,
                    const TM* gh_n, const float* h_prev, TM* dgh, TI* dgi, float* bias_sums, int64_t N,
                    int64_t H) {
  at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(7 * H);
    float* ghn = scratch.data();  // gh's n part, fp32
    float* rec = ghn + H;         // dgh_{t+1} @ W_hh row, fp32
    float* d = rec + H;           // d(gh) row: r, z, n parts; d(gi) = r, z parts and dan
    float* dan = d + 3 * H;
    float* dout_row = dan + H;  // dL/dh_{t+1} from the output, fp32
    for (int64_t i = begin; i < end; ++i) {
      load_row(gh_n + i * H, ghn, H);
      load_row(dout + i * H, dout_row, H);
      if (recurrent != nullptr) {
        load_row(recurrent + i * H, rec, H);
      } else {
        for (int64_t j = 0; j < H; ++j) rec[j] = 0.0f;
      }
      float* carry_row = carry + i * H;
      const float* r = rz + i * 2 * H;
      const float* z = r + H;
      const float* n_row = n + i * H;
      const float* h_row = h_prev + i * H;
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
      float* sums = bias_sums + i * 4 * H;
#pragma omp simd
      for (int64_t j = 0; j < 3 * H; ++j) sums[j] += d[j];
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) sums[3 * H + j] += dan[j];
      store_row(d, dgh + i * 3 * H, 3 * H);
      store_row(d, dgi + i * 3 * H, 2 * H);
      store_row(dan, dgi + i * 3 * H + 2 * H, H);
    }
  });
}

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

// gi [T, N, 3H] = x @ W_ih^T without its bias (fp32 or bf16), h0 [N, H] fp32, w_t = W_hh^T [H, 3H]
// in the matrix products' dtype (fp32 or bf16), b_ih and b = b_hh [3H] fp32. save: keep what the
// backward needs.
// Returns {hs [T+1, N, H] fp32, hs_mm, gh_n, rz, n}: h_0..h_T in fp32 and in the products' dtype
// (the same tensor for fp32; its h_1..h_T are the output), gh's n part [T, N, H], the gates;
// without save gh_n, rz and n are empty.
std::vector<at::Tensor> gru_forward(at::Tensor gi, at::Tensor h0, at::Tensor w_t, at::Tensor b_ih, at::Tensor b,
                                    bool save) {
  TORCH_CHECK(gi.dim() == 3 && gi.is_contiguous() && !gi.is_cuda(), "gi must be a contiguous CPU [T, N, 3H]");
  TORCH_CHECK(h0.scalar_type() == at::kFloat && h0.is_contiguous(), "h0 must be contiguous fp32");
  TORCH_CHECK(b.scalar_type() == at::kFloat && b.is_contiguous(), "b_hh must be contiguous fp32");
  TORCH_CHECK(b_ih.scalar_type() == at::kFloat && b_ih.is_contiguous(), "b_ih must be contiguous fp32");
  const int64_t T = gi.size(0), N = gi.size(1), H = gi.size(2) / 3;
  const auto mm = w_t.scalar_type();
  const bool separate_mm = mm != at::kFloat;
  auto f32 = gi.options().dtype(at::kFloat);
  auto mmo = gi.options().dtype(mm);
  at::Tensor hs = at::empty({T + 1, N, H}, f32);
  hs[0].copy_(h0);
  // h in the products' dtype: the next step's product reads it, and h_1..h_T are the output.
  at::Tensor hs_mm = separate_mm ? at::empty({T + 1, N, H}, mmo) : hs;
  if (separate_mm) hs_mm[0].copy_(h0);
  const int64_t keep = save ? T : 1;
  at::Tensor gh = at::empty({N, 3 * H}, mmo);  // this step's h @ W_hh^T (b_hh added in the gates)
  at::Tensor gh_n = save ? at::empty({T, N, H}, mmo) : at::Tensor();
  at::Tensor rz = at::empty({keep, N, 2 * H}, f32);
  at::Tensor n = at::empty({keep, N, H}, f32);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t s = save ? t : 0;
    at::mm_out(gh, hs_mm[t], w_t);
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
  if (!save) return {hs, hs_mm, at::Tensor(), at::Tensor(), at::Tensor()};
  return {hs, hs_mm, gh_n, rz, n};
}

// dout [T, N, H] (dL/dh_1..h_T, in the products' dtype); the saved tensors of gru_forward; w = W_hh [3H, H] in the
// products' dtype; gi_dtype_like: a tensor of gi's dtype. Returns {dgi, dh0, dw_hh, db_hh, db_ih},
// the bias gradients in fp32 (b_ih's is gi's column sums).
std::vector<at::Tensor> gru_backward(at::Tensor dout, at::Tensor hs, at::Tensor hs_mm, at::Tensor gh_n,
                                     at::Tensor rz, at::Tensor n, at::Tensor w, at::Tensor gi_dtype_like) {
  const int64_t T = dout.size(0), N = dout.size(1), H = dout.size(2);
  const auto mm = w.scalar_type();
  TORCH_CHECK(dout.scalar_type() == mm && dout.is_contiguous(), "dout must be contiguous, in the products' dtype");
  at::Tensor dgh = at::empty({T, N, 3 * H}, gh_n.options());
  at::Tensor dgi = at::empty({T, N, 3 * H}, gi_dtype_like.options());
  auto f32 = dout.options().dtype(at::kFloat);
  at::Tensor carry = at::zeros({N, H}, f32);
  at::Tensor recurrent = at::empty({N, H}, gh_n.options());
  at::Tensor bias_sums = at::zeros({N, 4 * H}, f32);
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
  at::Tensor dh0 = carry + recurrent.to(at::kFloat);
  at::Tensor flat = dgh.view({T * N, 3 * H});
  at::Tensor dw = at::mm(flat.t(), hs_mm.narrow(0, 0, T).reshape({T * N, H})).to(at::kFloat);
  at::Tensor sums = bias_sums.sum(0);  // [dgh_r, dgh_z, dgh_n, dgi_n] summed over steps and rows
  at::Tensor db_hh = sums.narrow(0, 0, 3 * H);
  at::Tensor db_ih = at::cat({sums.narrow(0, 0, 2 * H), sums.narrow(0, 3 * H, H)});
  return {dgi, dh0, dw, db_hh, db_ih};
}
