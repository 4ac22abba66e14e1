// Per-row passes over a training batch, compiled into the same library as gru_kernel.cpp (with the
// dtype dispatch and row loads of kernels.h, which both share): double Q's greedy values, the QMIX mix
// forward and backward (of one joint action per state or of K sampled ones), and the agent networks'
// inputs. Each is one pass where torch needs several full-size temporaries; on a 128-episode batch those were 15-30 ms apiece against a few here. The
// Python side is common/kernels/batch_passes.py (and learner/targets.py's double_q_max).
#include "kernels.h"

using namespace ovmse;  // the shared helpers of kernels.h

namespace {

// A [rows, width] view of a CPU tensor whose last axis is contiguous and whose leading axes collapse
// to one row stride (a view split off a wider tensor, for instance).
template <typename T>
struct Rows {
  T* data;
  int64_t stride;
  T* operator[](int64_t r) const { return data + r * stride; }
};

template <typename T>
Rows<T> rows_of(const at::Tensor& t, int64_t width, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.size(1) == width && (t.stride(1) == 1 || width == 1), name,
              " must be a [rows, ", width, "] view with a contiguous last axis");
  return {t.data_ptr<T>(), t.stride(0)};
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Double Q's bootstrap values, in this library so that one build serves the learner: for each row of
// `online` [B, T, n, A] (the online network's values), the value in `target` (same shape) at its
// greedy *available* action (the first of equal ones, as torch's argmax; action 0 where none is
// available). Any strides; fp32 or bf16 values, bool avail. Returns [B, T, n] fp32. One pass, where
// torch needs a masked copy, an argmax and a gather over the strided outputs of the unroll.
at::Tensor double_q_values(at::Tensor online, at::Tensor target, at::Tensor avail) {
  TORCH_CHECK(online.dim() == 4 && online.sizes() == target.sizes() && online.sizes() == avail.sizes(),
              "online, target and avail must be [B, T, n, A] alike");
  TORCH_CHECK(avail.scalar_type() == at::kBool, "avail must be bool");
  const int64_t B = online.size(0), T = online.size(1), n = online.size(2), A = online.size(3);
  at::Tensor out = at::empty({B, T, n}, online.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  const bool* av = avail.data_ptr<bool>();
  const auto sa = avail.strides();
  dispatch(online.scalar_type(), [&](auto on_type) {
    using TO = decltype(on_type);
    dispatch(target.scalar_type(), [&](auto target_type) {
      using TT = decltype(target_type);
      const TO* q = online.data_ptr<TO>();
      const TT* qt = target.data_ptr<TT>();
      const auto so = online.strides(), st = target.strides();
      at::parallel_for(0, B, 1, [&](int64_t first, int64_t last) {
        for (int64_t b = first; b < last; ++b)
          for (int64_t t = 0; t < T; ++t)
            for (int64_t m = 0; m < n; ++m) {
              const TO* row = q + b * so[0] + t * so[1] + m * so[2];
              const bool* ok = av + b * sa[0] + t * sa[1] + m * sa[2];
              int64_t best = 0;
              float best_value = 0.0f;
              bool found = false;
              for (int64_t a = 0; a < A; ++a) {
                if (!ok[a * sa[3]]) continue;
                const float value = static_cast<float>(row[a * so[3]]);
                if (!found || value > best_value) {
                  best = a;
                  best_value = value;
                  found = true;
                }
              }
              o[(b * T + t) * n + m] =
                  static_cast<float>(qt[b * st[0] + t * st[1] + m * st[2] + best * st[3]]);
            }
      });
    });
  });
  return out;
}

namespace {

inline float elu(float x) { return x > 0.0f ? x : exp_inline(x) - 1.0f; }

// The hidden layer before the ELU from weights already in fp32: pre[e] = bias[e] + sum_a q[a] w[a, e].
inline void hidden_before_elu(const float* q, const float* w, const float* bias, int64_t n, int64_t E, float* pre) {
  std::copy(bias, bias + E, pre);
  for (int64_t a = 0; a < n; ++a)
    for (int64_t e = 0; e < E; ++e) pre[e] += q[a] * w[a * E + e];
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// QMIX's mix, Q_tot = ELU(q . w1 + b1) . w2 + b2, of K joint actions per state (K = 1: the data's
// action; K > 1: the CQL terms' sampled joint actions): q [R, K*n] fp32, sample-major; w1 [R, n*E]
// (agent-major), b1 and w2 [R, E], b2 [R, 1], the four weights in one dtype (fp32 or bf16, read as
// fp32 once per state for all K). Returns Q_tot [R, K] fp32, summed in fp32 as torch does after
// casting the weights. Torch's version keeps [R, K, E] temporaries alive for its backward; here a
// sample's hidden layer lives in one short row.
at::Tensor mix_samples_forward(at::Tensor q, int64_t K, at::Tensor w1, at::Tensor b1, at::Tensor w2,
                               at::Tensor b2) {
  TORCH_CHECK(q.scalar_type() == at::kFloat, "q must be fp32");
  const int64_t R = q.size(0), E = b1.size(1), n = q.size(1) / K;
  TORCH_CHECK(n * K == q.size(1), "q must be [rows, K * n]");
  at::Tensor out = at::empty({R, K}, q.options());
  float* o = out.data_ptr<float>();
  const auto qr = rows_of<float>(q, K * n, "q");
  dispatch(w1.scalar_type(), [&](auto type) {
    using TW = decltype(type);
    const auto w1r = rows_of<TW>(w1, n * E, "w1"), b1r = rows_of<TW>(b1, E, "b1");
    const auto w2r = rows_of<TW>(w2, E, "w2"), b2r = rows_of<TW>(b2, 1, "b2");
    at::parallel_for(0, R, kGrain, [&](int64_t first, int64_t last) {
      std::vector<float> w(n * E), bias(E), v(E), pre(E);
      for (int64_t r = first; r < last; ++r) {
        load_row(w1r[r], w.data(), n * E);
        load_row(b1r[r], bias.data(), E);
        load_row(w2r[r], v.data(), E);
        const float b2v = static_cast<float>(b2r[r][0]);
        for (int64_t k = 0; k < K; ++k) {
          hidden_before_elu(qr[r] + k * n, w.data(), bias.data(), n, E, pre.data());
          float total = b2v;
          for (int64_t e = 0; e < E; ++e) total += elu(pre[e]) * v[e];
          o[r * K + k] = total;
        }
      }
    });
  });
  return out;
}

// Its backward from dQ_tot [R, K] fp32 (hidden layers recomputed: n*E products a sample, against
// reading a stored copy). Returns {dq [R, K*n] fp32,
// dw1 [R, n*E], db1 [R, E], dw2 [R, E]}, the weights' gradients summed over the K samples, in their
// dtype (db2 is the sum of dQ_tot over the samples).
std::vector<at::Tensor> mix_samples_backward(at::Tensor grad, at::Tensor q, at::Tensor w1, at::Tensor b1,
                                             at::Tensor w2) {
  TORCH_CHECK(grad.scalar_type() == at::kFloat && grad.is_contiguous() && grad.dim() == 2,
              "grad must be contiguous fp32 [rows, K]");
  const int64_t R = q.size(0), K = grad.size(1), E = b1.size(1), n = q.size(1) / K;
  at::Tensor dq = at::empty({R, K * n}, q.options());
  at::Tensor dw1 = at::empty({R, n * E}, w1.options());
  at::Tensor db1 = at::empty({R, E}, w1.options());
  at::Tensor dw2 = at::empty({R, E}, w1.options());
  const float* g = grad.data_ptr<float>();
  const auto qr = rows_of<float>(q, K * n, "q");
  float* dqp = dq.data_ptr<float>();
  dispatch(w1.scalar_type(), [&](auto type) {
    using TW = decltype(type);
    const auto w1r = rows_of<TW>(w1, n * E, "w1"), b1r = rows_of<TW>(b1, E, "b1");
    const auto w2r = rows_of<TW>(w2, E, "w2");
    TW *dw1p = dw1.data_ptr<TW>(), *db1p = db1.data_ptr<TW>(), *dw2p = dw2.data_ptr<TW>();
    at::parallel_for(0, R, kGrain, [&](int64_t first, int64_t last) {
      std::vector<float> w(n * E), bias(E), v(E), pre(E), dpre(E), dw(n * E), dbias(E), dv(E);
      for (int64_t r = first; r < last; ++r) {
        load_row(w1r[r], w.data(), n * E);
        load_row(b1r[r], bias.data(), E);
        load_row(w2r[r], v.data(), E);
        std::fill(dw.begin(), dw.end(), 0.0f);
        std::fill(dbias.begin(), dbias.end(), 0.0f);
        std::fill(dv.begin(), dv.end(), 0.0f);
        for (int64_t k = 0; k < K; ++k) {
          const float* qk = qr[r] + k * n;
          const float gk = g[r * K + k];
          hidden_before_elu(qk, w.data(), bias.data(), n, E, pre.data());
          for (int64_t e = 0; e < E; ++e) {
            const float p = pre[e];
            const bool positive = p > 0.0f;
            const float hidden = positive ? p : exp_inline(p) - 1.0f;
            dv[e] += gk * hidden;
            dpre[e] = gk * v[e] * (positive ? 1.0f : hidden + 1.0f);  // ELU' = ELU + 1 below 0
            dbias[e] += dpre[e];
          }
          float* dqk = dqp + (r * K + k) * n;
          for (int64_t a = 0; a < n; ++a) {
            float sum = 0.0f;
            for (int64_t e = 0; e < E; ++e) {
              sum += w[a * E + e] * dpre[e];
              dw[a * E + e] += qk[a] * dpre[e];
            }
            dqk[a] = sum;
          }
        }
        store_row(dw.data(), dw1p + r * n * E, n * E);
        store_row(dbias.data(), db1p + r * E, E);
        store_row(dv.data(), dw2p + r * E, E);
      }
    });
  });
  return {dq, dw1, db1, dw2};
}

// ---------------------------------------------------------------------------------------------------
// The agent networks' inputs [obs | previous action one-hot | agent id] for a batch: obs [B, T, n, O]
// fp32 (any strides), actions [B, T, n, 1] int64 -> [T, B, n, O + A + n] in `dtype` (fp32 or bf16),
// time-major, the recurrent unroll's layout. Row t's one-hot is the action at t-1 (none at t = 0, or
// for an action outside 0..A-1).
at::Tensor agent_inputs(at::Tensor obs, at::Tensor actions, int64_t n_actions, at::ScalarType dtype) {
  TORCH_CHECK(obs.dim() == 4 && obs.scalar_type() == at::kFloat, "obs must be fp32 [B, T, n, O]");
  TORCH_CHECK(actions.dim() == 4 && actions.scalar_type() == at::kLong && actions.size(0) == obs.size(0) &&
                  actions.size(1) == obs.size(1) && actions.size(2) == obs.size(2),
              "actions must be int64 [B, T, n, 1] alike obs");
  const int64_t B = obs.size(0), T = obs.size(1), n = obs.size(2), O = obs.size(3), A = n_actions;
  const int64_t width = O + A + n;
  at::Tensor out = at::empty({T, B, n, width}, obs.options().dtype(dtype));
  const float* ob = obs.data_ptr<float>();
  const int64_t* ac = actions.data_ptr<int64_t>();
  const auto so = obs.strides(), sa = actions.strides();
  dispatch(dtype, [&](auto type) {
    using TO = decltype(type);
    TO* base = out.data_ptr<TO>();
    at::parallel_for(0, T, 1, [&](int64_t first, int64_t last) {
      std::vector<float> row(width);
      for (int64_t t = first; t < last; ++t)
        for (int64_t b = 0; b < B; ++b)
          for (int64_t m = 0; m < n; ++m) {
            const float* o = ob + b * so[0] + t * so[1] + m * so[2];
            if (so[3] == 1) {
              std::memcpy(row.data(), o, O * sizeof(float));
            } else {
              for (int64_t j = 0; j < O; ++j) row[j] = o[j * so[3]];
            }
            std::fill(row.begin() + O, row.end(), 0.0f);
            if (t > 0) {
              const int64_t a = ac[b * sa[0] + (t - 1) * sa[1] + m * sa[2]];
              if (a >= 0 && a < A) row[O + a] = 1.0f;
            }
            row[O + A + m] = 1.0f;
            store_row(row.data(), base + ((t * B + b) * n + m) * width, width);
          }
    });
  });
  return out;
}
