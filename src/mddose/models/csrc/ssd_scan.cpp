// The Mamba-2 (SSD) scan as one sequential pass per (batch, head) on the CPU: the recurrence of
// mddose.models.ssm.ssd_scan_ref without its Python loop and without chunked temporaries.
//   h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T      (P x N state per head)
//   y_t = h_t C_t + D x_t
// Forward keeps the state every SEGMENT tokens; backward recomputes each segment's states from its
// checkpoint and runs the adjoint recurrence g_t = dy_t C_t^T + a_{t+1} g_{t+1} in reverse.
// All tensors float32, contiguous: x (B, L, H, P), dt (B, L, H), A (H), Bm/Cm (B, L, G, N), D (H, P).
// The H heads form `paths` equal blocks (scan paths); with reverse_odd, the heads of paths 1, 3, ... scan the
// tokens from last to first (the backward direction of a bidirectional mixer, without flipped copies).
#include <torch/extension.h>
#include <algorithm>
#include <cmath>
#include <vector>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

namespace {
constexpr int64_t SEGMENT = 64;
constexpr int64_t MAX_HEAD_DIM = 256;  // the largest head size P the kernel takes
constexpr float LOG_DECAY_FLOOR = -60.0f;  // as mddose.models.ssm: no denormal decays

// Flush denormals to zero while a scan runs on this thread (states that decay for long stretches would
// otherwise slow every operation on them down many times); the old mode comes back at the end.
struct FlushDenormals {
#if defined(__x86_64__)
  unsigned int saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// a = exp(max(dt A, floor)) and whether the floor was hit (then a does not depend on dt or A).
inline float decay(float step, float A, bool* floored) {
  const float la = step * A;
  *floored = la < LOG_DECAY_FLOOR;
  return std::exp(*floored ? LOG_DECAY_FLOOR : la);
}

struct Dims {
  int64_t b, l, h, p, g, n, heads_per_group, heads_per_path;
  bool reverse_odd;
  // the token a head visits at scan step t
  int64_t token(int64_t head, int64_t t) const {
    return reverse_odd && (head / heads_per_path) % 2 == 1 ? l - 1 - t : t;
  }
};

Dims dims_of(const torch::Tensor& x, const torch::Tensor& Bm, int64_t paths, bool reverse_odd) {
  TORCH_CHECK(paths > 0 && x.size(2) % paths == 0, "heads must split into equal blocks per path");
  Dims d{x.size(0), x.size(1), x.size(2), x.size(3), Bm.size(2), Bm.size(3), 0, 0, reverse_odd};
  d.heads_per_group = d.h / d.g;
  d.heads_per_path = d.h / paths;
  TORCH_CHECK(d.p <= MAX_HEAD_DIM, "the CPU kernel takes heads of at most ", MAX_HEAD_DIM, " channels, not ", d.p);
  return d;
}

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(),
              name, " must be a contiguous float32 CPU tensor");
}
}  // namespace

// The scan's float32 inputs and, for the backward, the output gradient.
struct ScanArgs {
  const float *x, *dt, *A, *B, *C, *D, *dy = nullptr;
};

// One head's forward scan (batch-head bh): y for every token, and the state entering every segment into
// saved (segs x N x P). PT is the head size P when known at compile time (0: d.p at run time), so that the
// inner loops unroll over whole vectors and the output row stays in registers.
template <int64_t PT>
void forward_head(const Dims& d, const ScanArgs& in, int64_t bh, float* __restrict y, float* __restrict saved,
                  float* __restrict h) {
  const int64_t P = PT > 0 ? PT : d.p, pn = P * d.n;
  const int64_t b = bh / d.h, hd = bh % d.h, gr = hd / d.heads_per_group;
  const float* __restrict Dh = in.D + hd * P;
  std::fill(h, h + pn, 0.0f);
  alignas(64) float acc[PT > 0 ? PT : MAX_HEAD_DIM];
  for (int64_t t = 0; t < d.l; ++t) {
    if (t % SEGMENT == 0) std::copy(h, h + pn, saved + (t / SEGMENT) * pn);
    const int64_t bl = b * d.l + d.token(hd, t), row = bl * d.h + hd;
    bool floored;
    const float step = in.dt[row], a = decay(step, in.A[hd], &floored);
    const float* __restrict xt = in.x + row * P;
    const float* __restrict Bt = in.B + (bl * d.g + gr) * d.n;
    const float* __restrict Ct = in.C + (bl * d.g + gr) * d.n;
#pragma omp simd
    for (int64_t i = 0; i < P; ++i) acc[i] = Dh[i] * xt[i];
    for (int64_t k = 0; k < d.n; ++k) {  // state row k: P channels, vectorised
      float* __restrict hk = h + k * P;
      const float bk = step * Bt[k], ck = Ct[k];
#pragma omp simd
      for (int64_t i = 0; i < P; ++i) {
        const float v = a * hk[i] + bk * xt[i];
        hk[i] = v;
        acc[i] += v * ck;
      }
    }
    std::copy(acc, acc + P, y + row * P);
  }
}

// Returns y (B, L, H, P) and the checkpoints (B, H, ceil(L / SEGMENT), N, P): the state entering each segment
// (kept N x P, so that the inner loops run over the P channels of a head without horizontal sums).
std::vector<torch::Tensor> ssd_forward(torch::Tensor x, torch::Tensor dt, torch::Tensor A, torch::Tensor Bm,
                                       torch::Tensor Cm, torch::Tensor D, int64_t paths, bool reverse_odd) {
  for (auto& [t, name] : {std::pair{x, "x"}, {dt, "dt"}, {A, "A"}, {Bm, "B"}, {Cm, "C"}, {D, "D"}}) check(t, name);
  const Dims d = dims_of(x, Bm, paths, reverse_odd);
  const int64_t segs = (d.l + SEGMENT - 1) / SEGMENT, pn = d.p * d.n;
  auto y = torch::empty_like(x);
  auto saved = torch::empty({d.b, d.h, segs, d.n, d.p}, x.options());
  const ScanArgs in{x.data_ptr<float>(), dt.data_ptr<float>(), A.data_ptr<float>(), Bm.data_ptr<float>(),
                    Cm.data_ptr<float>(), D.data_ptr<float>()};
  float *yp = y.data_ptr<float>(), *sp = saved.data_ptr<float>();
  at::parallel_for(0, d.b * d.h, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    std::vector<float> h(pn);
    for (int64_t bh = begin; bh < end; ++bh) {
      float* head_saved = sp + bh * segs * pn;
      switch (d.p) {
        case 16: forward_head<16>(d, in, bh, yp, head_saved, h.data()); break;
        case 32: forward_head<32>(d, in, bh, yp, head_saved, h.data()); break;
        case 64: forward_head<64>(d, in, bh, yp, head_saved, h.data()); break;
        default: forward_head<0>(d, in, bh, yp, head_saved, h.data());
      }
    }
  });
  return {y, saved};
}

// Where one head's gradients go: dx, ddt, dB and dC per head (B, L, H, N), and this head's sums for dA and dD.
struct ScanGrads {
  float *dx, *ddt, *dB, *dC, *dA, *dD;
};

// One head's backward (batch-head bh): each segment's states recomputed from its checkpoint, then the adjoint
// recurrence g_t = dy_t C_t^T + a_{t+1} g_{t+1} run from the segment's last token to its first. PT as in
// forward_head; states holds SEGMENT + 1 states, g one.
template <int64_t PT>
void backward_head(const Dims& d, const ScanArgs& in, int64_t bh, int64_t segs, const float* __restrict saved,
                   const ScanGrads& out, float* __restrict states, float* __restrict g) {
  const int64_t P = PT > 0 ? PT : d.p, pn = P * d.n;
  const int64_t b = bh / d.h, hd = bh % d.h, gr = hd / d.heads_per_group;
  const float Ah = in.A[hd];
  const float* __restrict Dh = in.D + hd * P;
  float* __restrict dDh = out.dD + bh * P;
  alignas(64) float dxl[PT > 0 ? PT : MAX_HEAD_DIM], dal[PT > 0 ? PT : MAX_HEAD_DIM];
  double dA = 0.0;
  std::fill(g, g + pn, 0.0f);
  float a_next = 0.0f;  // a_{t+1}: carries g to step t
  for (int64_t s = segs - 1; s >= 0; --s) {
    const int64_t t0 = s * SEGMENT, t1 = std::min(d.l, t0 + SEGMENT);
    // states[k] = h_{t0 + k - 1}: states[0] is the checkpoint entering the segment
    std::copy(saved + s * pn, saved + (s + 1) * pn, states);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bl = b * d.l + d.token(hd, t), row = bl * d.h + hd;
      bool floored;
      const float step = in.dt[row], a = decay(step, Ah, &floored);
      const float* __restrict xt = in.x + row * P;
      const float* __restrict Bt = in.B + (bl * d.g + gr) * d.n;
      const float* __restrict prev = states + (t - t0) * pn;
      float* __restrict cur = states + (t - t0 + 1) * pn;
      for (int64_t k = 0; k < d.n; ++k) {
        const float bk = step * Bt[k];
#pragma omp simd
        for (int64_t i = 0; i < P; ++i) cur[k * P + i] = a * prev[k * P + i] + bk * xt[i];
      }
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t bl = b * d.l + d.token(hd, t), row = bl * d.h + hd;
      bool floored;
      const float step = in.dt[row], a = decay(step, Ah, &floored);
      const float* __restrict xt = in.x + row * P;
      const float* __restrict dyt = in.dy + row * P;
      const float* __restrict Bt = in.B + (bl * d.g + gr) * d.n;
      const float* __restrict Ct = in.C + (bl * d.g + gr) * d.n;
      const float* __restrict prev = states + (t - t0) * pn;
      const float* __restrict cur = states + (t - t0 + 1) * pn;
#pragma omp simd
      for (int64_t i = 0; i < P; ++i) dxl[i] = dal[i] = 0.0f;  // dxl: first dL/du, then dL/dx
      for (int64_t k = 0; k < d.n; ++k) {
        float* __restrict gk = g + k * P;
        const float* __restrict hk = cur + k * P;
        const float* __restrict hp = prev + k * P;
        const float ck = Ct[k], bk = Bt[k];
        float dc = 0.0f, db = 0.0f;
#pragma omp simd reduction(+ : dc, db)
        for (int64_t i = 0; i < P; ++i) {
          dc += hk[i] * dyt[i];
          const float gi = a_next * gk[i] + dyt[i] * ck;  // dL/dh_t
          gk[i] = gi;
          dxl[i] += gi * bk;
          db += gi * xt[i];
          dal[i] += gi * hp[i];
        }
        out.dC[row * d.n + k] = dc;
        out.dB[row * d.n + k] = db * step;
      }
      float da = 0.0f, dstep = 0.0f;
      float* __restrict dxt = out.dx + row * P;
#pragma omp simd reduction(+ : da, dstep)
      for (int64_t i = 0; i < P; ++i) {
        da += dal[i];
        dstep += xt[i] * dxl[i];
        dDh[i] += dyt[i] * xt[i];
        dxt[i] = step * dxl[i] + Dh[i] * dyt[i];
      }
      // a = exp(step * A): da/dstep = a A, da/dA = a step (0 where the floor holds a)
      const float dla = floored ? 0.0f : da * a;
      out.ddt[row] = dstep + dla * Ah;
      dA += static_cast<double>(dla) * step;
      a_next = a;
    }
  }
  out.dA[bh] = static_cast<float>(dA);
}

// Gradients of ssd_forward: dx, ddt, dA (H), dB and dC per head (B, L, H, N; summed over a group's heads by the
// caller), dD (H, P).
std::vector<torch::Tensor> ssd_backward(torch::Tensor dy, torch::Tensor x, torch::Tensor dt, torch::Tensor A,
                                        torch::Tensor Bm, torch::Tensor Cm, torch::Tensor D, torch::Tensor saved,
                                        int64_t paths, bool reverse_odd) {
  for (auto& [t, name] : {std::pair{dy, "dy"}, {x, "x"}, {dt, "dt"}, {A, "A"}, {Bm, "B"}, {Cm, "C"}, {D, "D"},
                          {saved, "saved"}}) check(t, name);
  const Dims d = dims_of(x, Bm, paths, reverse_odd);
  const int64_t segs = saved.size(2), pn = d.p * d.n;
  auto dx = torch::empty_like(x);
  auto ddt = torch::empty_like(dt);
  auto dBh = torch::empty({d.b, d.l, d.h, d.n}, x.options());
  auto dCh = torch::empty({d.b, d.l, d.h, d.n}, x.options());
  auto dA_bh = torch::zeros({d.b, d.h}, x.options());
  auto dD_bh = torch::zeros({d.b, d.h, d.p}, x.options());
  const ScanArgs in{x.data_ptr<float>(), dt.data_ptr<float>(), A.data_ptr<float>(), Bm.data_ptr<float>(),
                    Cm.data_ptr<float>(), D.data_ptr<float>(), dy.data_ptr<float>()};
  const ScanGrads out{dx.data_ptr<float>(), ddt.data_ptr<float>(), dBh.data_ptr<float>(), dCh.data_ptr<float>(),
                      dA_bh.data_ptr<float>(), dD_bh.data_ptr<float>()};
  const float* sp = saved.data_ptr<float>();
  at::parallel_for(0, d.b * d.h, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals ftz;
    std::vector<float> states((SEGMENT + 1) * pn), g(pn);
    for (int64_t bh = begin; bh < end; ++bh) {
      const float* head_saved = sp + bh * segs * pn;
      switch (d.p) {
        case 16: backward_head<16>(d, in, bh, segs, head_saved, out, states.data(), g.data()); break;
        case 32: backward_head<32>(d, in, bh, segs, head_saved, out, states.data(), g.data()); break;
        case 64: backward_head<64>(d, in, bh, segs, head_saved, out, states.data(), g.data()); break;
        default: backward_head<0>(d, in, bh, segs, head_saved, out, states.data(), g.data());
      }
    }
  });
  return {dx, ddt, dA_bh.sum(0), dBh, dCh, dD_bh.sum(0)};
}

// The conv's shapes (see conv_silu_forward) and the taps of each path.
namespace {
struct ConvDims {
  int64_t nb, l, e, c, d, paths;
  bool reverse_odd;
  // the input token tap j of output token t reads on path k, or -1 off the sequence
  int64_t src(int64_t k, int64_t t, int64_t j) const {
    const int64_t s = reverse_odd && k % 2 == 1 ? t + (d - 1) - j : t - (d - 1) + j;
    return s >= 0 && s < l ? s : -1;
  }
};

ConvDims conv_dims(const torch::Tensor& u, const torch::Tensor& w, const torch::Tensor& bias, bool reverse_odd) {
  TORCH_CHECK(u.dim() == 3 && w.dim() == 2 && bias.dim() == 1 && bias.size(0) == w.size(0),
              "conv input must be (B, L, E), its weight (C, d) and its bias (C)");
  const int64_t e = u.size(2), c = w.size(0);
  TORCH_CHECK(c % e == 0, "conv weight rows must be a multiple of the input channels");
  return {u.size(0), u.size(1), e, c, w.size(1), c / e, reverse_odd};
}

// pre[k E + e] for output token t of one batch element (ub: its tokens; wt: the weight tap-major, (d, C))
void conv_pre(const ConvDims& cd, const float* __restrict ub, const float* __restrict wt, const float* __restrict bp,
              int64_t t, float* __restrict pre) {
  std::copy(bp, bp + cd.c, pre);
  for (int64_t k = 0; k < cd.paths; ++k) {
    float* __restrict pk = pre + k * cd.e;
    for (int64_t j = 0; j < cd.d; ++j) {
      const int64_t src = cd.src(k, t, j);
      if (src < 0) continue;
      const float* __restrict us = ub + src * cd.e;
      const float* __restrict wj = wt + j * cd.c + k * cd.e;
#pragma omp simd
      for (int64_t e = 0; e < cd.e; ++e) pk[e] += wj[e] * us[e];
    }
  }
}
}  // namespace

// The depthwise causal conv1d of the Mamba mixer followed by SiLU, in one pass over the tokens, for K paths
// that read the same input (C = K E output channels from E input channels; K = 1 when u holds every path):
//   act[b, t, k E + e] = silu(bias[k E + e] + sum_j w[k E + e, j] u[b, src(t, j), e])   (u = 0 off the ends)
// with src = t - (d - 1) + j (causal), or t + (d - 1) - j for the odd paths under reverse_odd (the causal conv of
// the reversed sequence, read in the original token order). u (B, L, E), w (C, d), bias (C), float32 and
// contiguous; act (B, L, C). The backward recomputes the pre-activation.
torch::Tensor conv_silu_forward(torch::Tensor u, torch::Tensor w, torch::Tensor bias, bool reverse_odd) {
  for (auto& [t, name] : {std::pair{u, "u"}, {w, "w"}, {bias, "bias"}}) check(t, name);
  const ConvDims cd = conv_dims(u, w, bias, reverse_odd);
  auto act = torch::empty({cd.nb, cd.l, cd.c}, u.options());
  const torch::Tensor wt = w.t().contiguous();  // (d, C): each tap's weights contiguous over the channels
  const float *up = u.data_ptr<float>(), *wp = wt.data_ptr<float>(), *bp = bias.data_ptr<float>();
  float* ap = act.data_ptr<float>();
  at::parallel_for(0, cd.nb * cd.l, 256, [&](int64_t begin, int64_t end) {
    std::vector<float> pre(cd.c);
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / cd.l, t = bt % cd.l;
      conv_pre(cd, up + b * cd.l * cd.e, wp, bp, t, pre.data());
      float* out = ap + bt * cd.c;
#pragma omp simd
      for (int64_t e = 0; e < cd.c; ++e) out[e] = pre[e] / (1.0f + std::exp(-pre[e]));
    }
  });
  return act;
}

std::vector<torch::Tensor> conv_silu_backward(torch::Tensor grad, torch::Tensor u, torch::Tensor w,
                                              torch::Tensor bias, bool reverse_odd) {
  for (auto& [t, name] : {std::pair{grad, "grad"}, {u, "u"}, {w, "w"}, {bias, "bias"}}) check(t, name);
  const ConvDims cd = conv_dims(u, w, bias, reverse_odd);
  auto du = torch::zeros_like(u);
  auto dw = torch::zeros({cd.nb, cd.d, cd.c}, u.options());  // tap-major, as wt
  const torch::Tensor wt = w.t().contiguous();
  auto db = torch::zeros({cd.nb, cd.c}, u.options());
  const float *gp = grad.data_ptr<float>(), *up = u.data_ptr<float>(), *wp = wt.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float *dup = du.data_ptr<float>(), *dwp = dw.data_ptr<float>(), *dbp = db.data_ptr<float>();
  at::parallel_for(0, cd.nb, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> pre(cd.c), g(cd.c);  // g: dL/d(pre-activation) of one token
    for (int64_t b = begin; b < end; ++b) {
      const float* ub = up + b * cd.l * cd.e;
      float *dub = dup + b * cd.l * cd.e, *dwb = dwp + b * cd.c * cd.d, *dbb = dbp + b * cd.c;
      for (int64_t t = 0; t < cd.l; ++t) {
        conv_pre(cd, ub, wp, bp, t, pre.data());
        const float* gt = gp + (b * cd.l + t) * cd.c;
#pragma omp simd
        for (int64_t e = 0; e < cd.c; ++e) {
          const float sg = 1.0f / (1.0f + std::exp(-pre[e]));
          g[e] = gt[e] * sg * (1.0f + pre[e] * (1.0f - sg));
          dbb[e] += g[e];
        }
        for (int64_t k = 0; k < cd.paths; ++k) {
          const float* __restrict gk = g.data() + k * cd.e;
          for (int64_t j = 0; j < cd.d; ++j) {
            const int64_t src = cd.src(k, t, j);
            if (src < 0) continue;
            const float* __restrict wj = wp + j * cd.c + k * cd.e;
            const float* __restrict us = ub + src * cd.e;
            float* __restrict dus = dub + src * cd.e;
            float* __restrict dwj = dwb + j * cd.c + k * cd.e;
#pragma omp simd
            for (int64_t e = 0; e < cd.e; ++e) {
              dus[e] += wj[e] * gk[e];
              dwj[e] += gk[e] * us[e];
            }
          }
        }
      }
    }
  });
  return {du, dw.sum(0).t().contiguous(), db.sum(0)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("conv_silu_forward", &conv_silu_forward, "causal depthwise conv1d + SiLU forward (CPU)");
  m.def("conv_silu_backward", &conv_silu_backward, "causal depthwise conv1d + SiLU backward (CPU)");
  m.def("forward", &ssd_forward, "SSD scan forward (CPU)");
  m.def("backward", &ssd_backward, "SSD scan backward (CPU)");
}
