// What the two sources of the compiled library share: the row helpers both use (fp32/bf16 dispatch,
// e^x, row loads and stores between a tensor's dtype and fp32 scratch) and the library's functions,
// which gru_kernel.cpp binds to Python. Built by common/kernels/__init__.py (gru_kernel.cpp and
// batch_kernels.cpp, one extension); see there for the Python side.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace ovmse {

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

}  // namespace ovmse

// --- the library's functions (each documented where it is defined) ---------------------------------

// gru_kernel.cpp: the fused GRU unroll and the actors' one-step forward on AMX tiles.
bool amx_available();
at::Tensor exp_for_test(at::Tensor x);
std::vector<at::Tensor> gru_forward(at::Tensor gi, at::Tensor h0, at::Tensor w_t, at::Tensor b_ih, at::Tensor b,
                                    bool save);
std::vector<at::Tensor> gru_forward_tiles(at::Tensor x, bool relu_x, at::Tensor h0, at::Tensor wi_t,
                                          at::Tensor wh_t, at::Tensor b_ih, at::Tensor b, bool save);
std::vector<at::Tensor> gru_backward(at::Tensor dout, at::Tensor hs, at::Tensor hs_mm, at::Tensor gh_n,
                                     at::Tensor rz, at::Tensor n, at::Tensor w, at::Tensor gi_dtype_like);
std::vector<at::Tensor> gru_backward_tiles(at::Tensor dout, at::Tensor hs, at::Tensor hs_mm, at::Tensor gh_n,
                                           at::Tensor rz, at::Tensor n, at::Tensor x, bool relu_x,
                                           at::Tensor w_ih, at::Tensor w_hh);
at::Tensor pack_for_tiles(at::Tensor w, int64_t m_pad);
std::vector<at::Tensor> agent_step_tiles(at::Tensor inputs, at::Tensor hidden, at::Tensor w1, at::Tensor b1,
                                         at::Tensor w_ih, at::Tensor b_ih, at::Tensor w_hh, at::Tensor b_hh,
                                         at::Tensor w2, at::Tensor b2);

// batch_kernels.cpp: per-row passes over a training batch.
at::Tensor double_q_values(at::Tensor online, at::Tensor target, at::Tensor avail);
at::Tensor mix_samples_forward(at::Tensor q, int64_t K, at::Tensor w1, at::Tensor b1, at::Tensor w2,
                               at::Tensor b2);
std::vector<at::Tensor> mix_samples_backward(at::Tensor grad, at::Tensor q, at::Tensor w1, at::Tensor b1,
                                             at::Tensor w2);
at::Tensor agent_inputs(at::Tensor obs, at::Tensor actions, int64_t n_actions, at::ScalarType dtype);
