// Fused flash attention for XLA:CPU (XLA FFI custom calls), float32.
//
// wmtp_flash_fwd(q [.., S, H, D], k [.., S, KV, D], v [.., S, KV, D], seg [.., S] int32)
//     -> out [.., S, H, D], lse [.., H, S]      attributes causal (int32, 0/1), scale (float32)
// wmtp_flash_bwd(q, k, v, seg, out, lse, dout) -> dq, dk, dv
//
// out = softmax(scale · q kᵀ + mask) v per (row, query head); query head h reads kv head h / (H/KV).
// Key j is visible to query i iff seg[j] == seg[i], seg[j] != 0 and (not causal or j <= i).
// A query with no visible key gets out = 0 and lse = +inf (its gradient is 0).
// Leading dimensions (the batch, and any vmapped axes) are flattened into one batch.
//
// Blocks of 64 queries x 64 keys: the forward runs an online softmax per query block (task =
// batch row x head x query block); the backward (FlashAttention-2) recomputes P = exp(s - lse)
// per block pair (task = batch row x kv head, which owns its dk, dv and its heads' dq, so no two
// tasks write the same output). Causally masked and cross-segment block pairs are skipped.
// Every task's arithmetic is fixed, so results do not depend on the thread count or schedule.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int BQ = 64;  // query block
constexpr int BK = 64;  // key block (== BQ: the causal diagonal is one block pair)
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
typedef int32_t i16 __attribute__((vector_size(64)));
typedef int32_t i16u __attribute__((vector_size(64), aligned(4)));

inline v16 ld(const float* p) { return *reinterpret_cast<const v16u*>(p); }
inline i16 ldi(const int32_t* p) { return *reinterpret_cast<const i16u*>(p); }
inline void st(float* p, v16 x) { *reinterpret_cast<v16u*>(p) = x; }
inline v16 splat(float x) { return v16{} + x; }
inline i16 splati(int32_t x) { return i16{} + x; }
inline float hmax(v16 x) {
  float m = x[0];
  for (int i = 1; i < 16; ++i) m = std::max(m, x[i]);
  return m;
}
inline float hsum(v16 x) {
  float s = 0.f;
  for (int i = 0; i < 16; ++i) s += x[i];
  return s;
}

// exp(x) per lane (Cephes expf polynomial, ~1 ulp on the range used); exp(x) = 0 for x < -87.
inline v16 exp16(v16 x) {
  const v16 lo = splat(-87.0f), hi = splat(88.0f);
  v16 xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;
  v16 fx = xc * 1.44269504088896341f + 0.5f;
  v16 t = __builtin_convertvector(__builtin_convertvector(fx, i16), v16);
  t = t > fx ? t - 1.0f : t;  // floor
  v16 r = xc - t * 0.693359375f;
  r = r - t * -2.12194440e-4f;
  v16 y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  i16 e = (__builtin_convertvector(t, i16) + 127) << 23;
  v16 res = y * (v16)e;  // same-size vector cast: a bit reinterpretation
  return x < lo ? splat(0.f) : res;
}

// S[64][64] = A[64][D] · BT[D][64]   (A row stride lda; BT packed)
template <int NV>
void gemm_nt(const float* A, int64_t lda, const float* BT, float* S) {
  constexpr int D = NV * 16;
  for (int i = 0; i < BQ; i += 4) {
    v16 c[4][4] = {};
    for (int d = 0; d < D; ++d) {
      v16 b[4];
#pragma GCC unroll 4
      for (int x = 0; x < 4; ++x) b[x] = ld(BT + d * BK + 16 * x);
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) {
        const float a = A[(i + r) * lda + d];
#pragma GCC unroll 4
        for (int x = 0; x < 4; ++x) c[r][x] += a * b[x];
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r)
#pragma GCC unroll 4
      for (int x = 0; x < 4; ++x) st(S + (i + r) * BK + 16 * x, c[r][x]);
  }
}

// C[64][D] += A[64][n] · B[n][D]; TA: A is given transposed, A[j][i] at A[j * lda + i].
// (B row stride ldb, C row stride ldc.)
template <int NV, bool TA>
void gemm_acc(int n, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
              int64_t ldc) {
  constexpr int R = NV >= 16 ? 1 : (16 / NV > 8 ? 8 : 16 / NV);
  for (int i = 0; i < 64; i += R) {
    v16 c[R][NV] = {};  // the block's sum, added to C at the end (shorter rounding chains)
    for (int j = 0; j < n; ++j) {
      v16 b[NV];
#pragma GCC unroll 16
      for (int x = 0; x < NV; ++x) b[x] = ld(B + j * ldb + 16 * x);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const float a = TA ? A[j * lda + i + r] : A[(i + r) * lda + j];
#pragma GCC unroll 16
        for (int x = 0; x < NV; ++x) c[r][x] += a * b[x];
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int x = 0; x < NV; ++x) st(C + (i + r) * ldc + 16 * x, ld(C + (i + r) * ldc + 16 * x) + c[r][x]);
  }
}

// Runs fn(0..n-1) on the caller and up to the pool's threads. Tasks are claimed from a shared
// counter; the caller returns once all n have finished (workers that start late find none left
// and only touch the shared state, which they co-own).
void parallel_for(ffi::ThreadPool& pool, int64_t n, const std::function<void(int64_t)>& fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    int64_t n = 0;
    const std::function<void(int64_t)>* fn = nullptr;
  };
  auto state = std::make_shared<State>();
  state->n = n;
  state->fn = &fn;
  auto work = [](State* s) {
    for (int64_t i; (i = s->next.fetch_add(1)) < s->n;) {
      (*s->fn)(i);
      s->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t extra = std::min<int64_t>(pool.num_threads() - 1, n - 1);
  for (int64_t w = 0; w < extra; ++w) pool.Schedule([state, work] { work(state.get()); });
  work(state.get());
  while (state->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

struct Dims {
  int64_t B, S, H, KV, D, G;
};

// Per (row, block): smallest nonzero and largest segment id, and whether the block holds one
// nonzero id only (no masking needed between two such blocks with the same id).
struct BlockSegs {
  int64_t nb;
  std::vector<int32_t> lo, hi;
  std::vector<char> uniform;
  BlockSegs(const int32_t* seg, int64_t B, int64_t S) : nb((S + 63) / 64) {
    lo.resize(B * nb);
    hi.resize(B * nb);
    uniform.resize(B * nb);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < nb; ++k) {
        int32_t l = std::numeric_limits<int32_t>::max(), h = 0;
        bool zero = false;
        const int64_t end = std::min<int64_t>(S, (k + 1) * 64);
        for (int64_t t = k * 64; t < end; ++t) {
          const int32_t s = seg[b * S + t];
          if (s == 0) {
            zero = true;
          } else {
            l = std::min(l, s);
          }
          h = std::max(h, s);
        }
        lo[b * nb + k] = l;
        hi[b * nb + k] = h;
        uniform[b * nb + k] = !zero && l == h && end - k * 64 == 64;
      }
  }
  bool live(int64_t b, int64_t qb, int64_t kb) const {
    const int64_t i = b * nb + qb, j = b * nb + kb;
    return lo[i] <= hi[j] && lo[j] <= hi[i];
  }
  bool plain(int64_t b, int64_t qb, int64_t kb) const {  // no segment mask needed
    const int64_t i = b * nb + qb, j = b * nb + kb;
    return uniform[i] && uniform[j] && lo[i] == lo[j];
  }
};

// Rows [r0, r0 + 64) of x[b, :, head, :] as (pointer, row stride): in place when the block
// is whole, else copied into tmp[64][D] with zeros past S.
inline const float* rows(const float* x, const Dims& d, int64_t b, int64_t r0, int64_t head,
                         int64_t heads, float* tmp, int64_t* stride) {
  const float* base = x + ((b * d.S + r0) * heads + head) * d.D;
  if (r0 + 64 <= d.S) {
    *stride = heads * d.D;
    return base;
  }
  for (int r = 0; r < 64; ++r) {
    if (r0 + r < d.S)
      std::memcpy(tmp + r * d.D, base + r * heads * d.D, sizeof(float) * d.D);
    else
      std::memset(tmp + r * d.D, 0, sizeof(float) * d.D);
  }
  *stride = d.D;
  return tmp;
}

// xt[b, head, blk] = [D][64]: x[b, blk*64 + j, head, :] transposed, zeros past S, for every
// (row, kv head, block); layout [B][KV][nb][D][64].
void pack_t(const float* x, const Dims& d, float* xt, ffi::ThreadPool& pool);

// Sets s[i][j] = -inf where key k0 + j is invisible to query q0 + i (causal, segments, past S).
inline void mask_block(float* s, const int32_t* segq, const int32_t* segk, int64_t q0, int64_t k0,
                       bool causal, bool segments) {
  const v16 ninf = splat(NEG_INF);
  const i16 iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  for (int i = 0; i < BQ; ++i) {
    const i16 sq = splati(segq[i]);
    const int32_t lim = static_cast<int32_t>(q0 + i - k0);  // causal: j <= lim
    for (int x = 0; x < 4; ++x) {
      v16 v = ld(s + i * BK + 16 * x);
      if (segments) {
        const i16 sk = ldi(segk + 16 * x);
        v = (sk != sq) | (sk == 0) ? ninf : v;
      }
      if (causal) v = (iota + 16 * x) > lim ? ninf : v;
      st(s + i * BK + 16 * x, v);
    }
  }
}

inline void load_seg(const int32_t* seg, const Dims& d, int64_t b, int64_t r0, int32_t* dst) {
  for (int r = 0; r < 64; ++r) dst[r] = r0 + r < d.S ? seg[b * d.S + r0 + r] : 0;
}

template <int NV>
void forward(const Dims& d, const float* q, const float* k, const float* v, const int32_t* seg,
             bool causal, float scale, float* out, float* lse, ffi::ThreadPool& pool) {
  constexpr int D = NV * 16;
  const int64_t nb = (d.S + 63) / 64;
  const BlockSegs segs(seg, d.B, d.S);
  std::vector<float> kt_all(d.B * d.KV * nb * D * 64);
  pack_t(k, d, kt_all.data(), pool);
  parallel_for(pool, d.B * d.H * nb, [&](int64_t task) {
    const int64_t qb = task % nb, h = (task / nb) % d.H, b = task / (nb * d.H);
    const int64_t kvh = h / d.G, q0 = qb * BQ;
    alignas(64) float qtmp[BQ * D], s[BQ * BK], acc[BQ * D];
    alignas(64) int32_t segq[BQ], segk[BK];
    float m[BQ], l[BQ];
    int64_t ldq;
    const float* qs = rows(q, d, b, q0, h, d.H, qtmp, &ldq);
    load_seg(seg, d, b, q0, segq);
    std::fill(m, m + BQ, NEG_INF);
    std::fill(l, l + BQ, 0.f);
    std::memset(acc, 0, sizeof(acc));
    const int64_t kend = causal ? qb + 1 : nb;
    for (int64_t kb = 0; kb < kend; ++kb) {
      if (!segs.live(b, qb, kb)) continue;
      const int64_t k0 = kb * BK;
      const int nk = static_cast<int>(std::min<int64_t>(BK, d.S - k0));
      load_seg(seg, d, b, k0, segk);
      gemm_nt<NV>(qs, ldq, kt_all.data() + ((b * d.KV + kvh) * nb + kb) * D * 64, s);
      const bool segments = !segs.plain(b, qb, kb);
      if (segments || (causal && kb == qb)) mask_block(s, segq, segk, q0, k0, causal, segments);
      for (int i = 0; i < BQ; ++i) {
        float* row = s + i * BK;
        v16 mx = ld(row);
        for (int x = 1; x < 4; ++x) mx = mx > ld(row + 16 * x) ? mx : ld(row + 16 * x);
        const float rmax = hmax(mx) * scale;
        if (rmax == NEG_INF) {  // nothing visible in this block
          std::memset(row, 0, sizeof(float) * BK);
          continue;
        }
        const float mn = std::max(m[i], rmax);
        const float alpha = std::exp(m[i] - mn);
        v16 sum = {};
        for (int x = 0; x < 4; ++x) {
          const v16 p = exp16(ld(row + 16 * x) * scale - mn);
          st(row + 16 * x, p);
          sum += p;
        }
        l[i] = l[i] * alpha + hsum(sum);
        m[i] = mn;
        if (alpha != 1.f)
          for (int x = 0; x < NV; ++x) st(acc + i * D + 16 * x, ld(acc + i * D + 16 * x) * alpha);
      }
      const float* vb = v + ((b * d.S + k0) * d.KV + kvh) * D;
      gemm_acc<NV, false>(nk, s, BK, vb, d.KV * D, acc, D);
    }
    for (int i = 0; i < BQ && q0 + i < d.S; ++i) {
      float* o = out + ((b * d.S + q0 + i) * d.H + h) * D;
      const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
      for (int e = 0; e < D; ++e) o[e] = acc[i * D + e] * inv;
      lse[(b * d.H + h) * d.S + q0 + i] =
          l[i] > 0.f ? m[i] + std::log(l[i]) : std::numeric_limits<float>::infinity();
    }
  });
}

template <int NV>
void backward(const Dims& d, const float* q, const float* k, const float* v, const int32_t* seg,
              const float* out, const float* lse, const float* dout, bool causal, float scale,
              float* dq,
              float* dk, float* dv, ffi::ThreadPool& pool) {
  constexpr int D = NV * 16;
  const int64_t nb = (d.S + 63) / 64, sp = nb * 64;
  const float inf = std::numeric_limits<float>::infinity();
  const BlockSegs segs(seg, d.B, d.S);
  std::vector<float> kt_all(d.B * d.KV * nb * D * 64), vt_all(kt_all.size());
  pack_t(k, d, kt_all.data(), pool);
  pack_t(v, d, vt_all.data(), pool);
  parallel_for(pool, d.B * d.KV, [&](int64_t task) {
    const int64_t kvh = task % d.KV, b = task / d.KV;
    // this task's heads: dq accumulators [G][sp][D], delta = rowsum(dO ∘ O) and lse [G][sp]
    std::vector<float> dqa(d.G * sp * D, 0.f), delta(d.G * sp, 0.f), lsep(d.G * sp, inf);
    for (int64_t g = 0; g < d.G; ++g) {
      const int64_t h = kvh * d.G + g;
      std::memcpy(lsep.data() + g * sp, lse + (b * d.H + h) * d.S, sizeof(float) * d.S);
      for (int64_t t = 0; t < d.S; ++t) {
        const float* o = out + ((b * d.S + t) * d.H + h) * D;
        const float* go = dout + ((b * d.S + t) * d.H + h) * D;
        float acc = 0.f;
        for (int e = 0; e < D; ++e) acc += o[e] * go[e];
        delta[g * sp + t] = acc;
      }
    }
    alignas(64) float qtmp[BQ * D], dotmp[BQ * D], ktmp[BK * D];
    alignas(64) float p[BQ * BK], ds[BQ * BK], dka[BK * D], dva[BK * D];
    alignas(64) int32_t segq[BQ], segk[BK];
    for (int64_t kb = 0; kb < nb; ++kb) {
      const int64_t k0 = kb * BK;
      const int nk = static_cast<int>(std::min<int64_t>(BK, d.S - k0));
      const int64_t blk = ((b * d.KV + kvh) * nb + kb) * D * 64;
      int64_t ldk;
      const float* kr = rows(k, d, b, k0, kvh, d.KV, ktmp, &ldk);
      load_seg(seg, d, b, k0, segk);
      std::memset(dka, 0, sizeof(dka));
      std::memset(dva, 0, sizeof(dva));
      for (int64_t g = 0; g < d.G; ++g) {
        const int64_t h = kvh * d.G + g;
        for (int64_t qb = causal ? kb : 0; qb < nb; ++qb) {
          if (!segs.live(b, qb, kb)) continue;
          const int64_t q0 = qb * BQ;
          int64_t ldq, ldo;
          const float* qs = rows(q, d, b, q0, h, d.H, qtmp, &ldq);
          const float* dos = rows(dout, d, b, q0, h, d.H, dotmp, &ldo);
          load_seg(seg, d, b, q0, segq);
          gemm_nt<NV>(qs, ldq, kt_all.data() + blk, p);
          const bool segments = !segs.plain(b, qb, kb);
          if (segments || (causal && kb == qb)) mask_block(p, segq, segk, q0, k0, causal, segments);
          gemm_nt<NV>(dos, ldo, vt_all.data() + blk, ds);  // dP
          for (int i = 0; i < BQ; ++i) {
            const float li = lsep[g * sp + q0 + i], di = delta[g * sp + q0 + i];
            for (int x = 0; x < 4; ++x) {
              float* pr = p + i * BK + 16 * x;
              float* dr = ds + i * BK + 16 * x;
              const v16 pv = li == inf ? splat(0.f) : exp16(ld(pr) * scale - li);
              st(pr, pv);
              st(dr, pv * (ld(dr) - di) * scale);
            }
          }
          gemm_acc<NV, true>(BQ, p, BK, dos, ldo, dva, D);   // dV += Pᵀ dO
          gemm_acc<NV, true>(BQ, ds, BK, qs, ldq, dka, D);   // dK += dSᵀ Q
          gemm_acc<NV, false>(nk, ds, BK, kr, ldk, dqa.data() + (g * sp + q0) * D, D);  // dQ += dS K
        }
      }
      for (int j = 0; j < nk; ++j) {
        std::memcpy(dk + ((b * d.S + k0 + j) * d.KV + kvh) * D, dka + j * D, sizeof(float) * D);
        std::memcpy(dv + ((b * d.S + k0 + j) * d.KV + kvh) * D, dva + j * D, sizeof(float) * D);
      }
    }
    for (int64_t g = 0; g < d.G; ++g) {
      const int64_t h = kvh * d.G + g;
      for (int64_t t = 0; t < d.S; ++t)
        std::memcpy(dq + ((b * d.S + t) * d.H + h) * D, dqa.data() + (g * sp + t) * D,
                    sizeof(float) * D);
    }
  });
}

void pack_t(const float* x, const Dims& d, float* xt, ffi::ThreadPool& pool) {
  const int64_t nb = (d.S + 63) / 64;
  parallel_for(pool, d.B * d.KV * nb, [&](int64_t task) {
    const int64_t kb = task % nb, kvh = (task / nb) % d.KV, b = task / (nb * d.KV);
    float* dst = xt + task * d.D * 64;
    for (int j = 0; j < 64; ++j) {
      const int64_t t = kb * 64 + j;
      if (t < d.S) {
        const float* src = x + ((b * d.S + t) * d.KV + kvh) * d.D;
        for (int64_t e = 0; e < d.D; ++e) dst[e * 64 + j] = src[e];
      } else {
        for (int64_t e = 0; e < d.D; ++e) dst[e * 64 + j] = 0.f;
      }
    }
  });
}

// q [.., S, H, D], k [.., S, KV, D]: the flattened dimensions, or an error.
ffi::Error dims_of(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k,
                   ffi::Buffer<ffi::S32>& seg, Dims* d) {
  auto qd = q.dimensions(), kd = k.dimensions(), sd = seg.dimensions();
  if (qd.size() < 3 || kd.size() != qd.size() || sd.size() != qd.size() - 2)
    return ffi::Error::InvalidArgument("wmtp_flash: bad ranks");
  d->B = 1;
  for (size_t i = 0; i + 3 < qd.size(); ++i) {
    if (kd[i] != qd[i] || sd[i] != qd[i])
      return ffi::Error::InvalidArgument("wmtp_flash: batch dimensions differ");
    d->B *= qd[i];
  }
  const size_t r = qd.size();
  d->S = qd[r - 3];
  d->H = qd[r - 2];
  d->D = qd[r - 1];
  d->KV = kd[r - 2];
  if (kd[r - 3] != d->S || kd[r - 1] != d->D || sd[r - 3] != d->S || d->KV < 1 ||
      d->H % d->KV)
    return ffi::Error::InvalidArgument("wmtp_flash: shapes do not match");
  d->G = d->H / d->KV;
  return ffi::Error::Success();
}

#define WMTP_DISPATCH(D, CALL)                                                   \
  switch (D) {                                                                   \
    case 16: { constexpr int NV = 1; CALL; break; }                              \
    case 32: { constexpr int NV = 2; CALL; break; }                              \
    case 64: { constexpr int NV = 4; CALL; break; }                              \
    case 128: { constexpr int NV = 8; CALL; break; }                             \
    case 256: { constexpr int NV = 16; CALL; break; }                            \
    default:                                                                     \
      return ffi::Error::InvalidArgument("wmtp_flash: head_dim must be 16, 32, 64, 128 or 256"); \
  }

ffi::Error FlashFwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> seg,
                    ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse,
                    int32_t causal, float scale) {
  Dims d;
  if (auto e = dims_of(q, k, seg, &d); e.failure()) return e;
  if (d.B * d.S * d.H == 0) return ffi::Error::Success();
  WMTP_DISPATCH(d.D, (forward<NV>(d, q.typed_data(), k.typed_data(), v.typed_data(),
                                  seg.typed_data(), causal != 0, scale, out->typed_data(),
                                  lse->typed_data(), pool)));
  return ffi::Error::Success();
}

ffi::Error FlashBwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> seg,
                    ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq,
                    ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv,
                    int32_t causal, float scale) {
  Dims d;
  if (auto e = dims_of(q, k, seg, &d); e.failure()) return e;
  if (d.B * d.S * d.H == 0) return ffi::Error::Success();
  WMTP_DISPATCH(d.D, (backward<NV>(d, q.typed_data(), k.typed_data(), v.typed_data(),
                                   seg.typed_data(), out.typed_data(), lse.typed_data(),
                                   dout.typed_data(), causal != 0, scale, dq->typed_data(),
                                   dk->typed_data(), dv->typed_data(), pool)));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(WmtpFlashFwd, FlashFwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("causal")
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(WmtpFlashBwd, FlashBwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("causal")
                                  .Attr<float>("scale"));
