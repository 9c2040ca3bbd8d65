// Bidirectional self-attention of right-padded rows for the XLA CPU backend (an XLA FFI call).
//
// XLA's CPU code for encoder attention is two batched matmuls of B*H tiny [T, hd] x [hd, T]
// products around a softmax over a [B, H, T, T] tensor that does not fit in cache: several
// times what the arithmetic costs. This kernel computes, for every row b and head h, over the
// row's real tokens only (L = lengths[b]):
//
//   out[b, i, h, :] = softmax_j(q[b, i, h] . k[b, j, h]) v[b, j, h, :]    i, j < L
//
// with the scores of one block of query rows in cache, and writes zeros for the padded queries
// i >= L (their keys are never read either). Each (row, head) is computed on its own in a fixed
// order, so a row's result does not depend on what else is in the batch.
//
// Layouts (float32, row-major): qkv [B, T, 3, H, hd] (the fused projection, q pre-scaled by
// 1/sqrt(hd)); lengths [B] int32; out [B, T, H, hd]. The packed variant takes sequences laid
// back to back instead: qkv [N, 3, H, hd], each sequence's start and length [S] int32, and
// computes the same for each sequence over its own tokens only. hd must be a multiple of the vector width
// (8 floats, 16 with AVX-512). The softmax's exponential is a polynomial (ExpNonPositive,
// relative error ~1e-7): libm's vector expf cost more than the score matmul here.
//
// Work is claimed from an atomic counter by the calling thread and by helpers scheduled on
// XLA's intra-op thread pool; the caller waits only for work already claimed, never for a
// helper to start, so a busy pool cannot deadlock it.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"
#include "cpu_parallel.h"

namespace ffi = xla::ffi;

namespace {

// The machine's vector width (-march=native): 16 lanes and 32 registers with AVX-512, else 8
// lanes and 16 registers; kRows query rows per block keep 2 * kRows accumulators in registers.
#ifdef __AVX512F__
constexpr int kLanes = 16;
constexpr int kRows = 8;
#else
constexpr int kLanes = 8;
constexpr int kRows = 4;
#endif
typedef float V8 __attribute__((vector_size(kLanes * 4)));
typedef float V8u __attribute__((vector_size(kLanes * 4), aligned(4)));  // unaligned access

inline V8 Load(const float* p) { return *reinterpret_cast<const V8u*>(p); }
inline void Store(float* p, V8 v) { *reinterpret_cast<V8u*>(p) = v; }
#if defined(__AVX512F__)
inline V8 Splat(float x) { return (V8)_mm512_set1_ps(x); }
#elif defined(__AVX__)
inline V8 Splat(float x) { return (V8)_mm256_set1_ps(x); }
#else
inline V8 Splat(float x) { return x - V8{}; }
#endif
typedef int32_t I8 __attribute__((vector_size(kLanes * 4)));

// e^x for x <= 0 (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-5 polynomial for
// e^r, then 2^n from the exponent bits; relative error ~1e-7). x is clamped to [-87, 0], so
// the result is never a denormal; libm's vector expf costs several times more here.
inline V8 ExpNonPositive(V8 x) {
  x = x < Splat(-87.0f) ? Splat(-87.0f) : x;
  x = x > Splat(0.0f) ? Splat(0.0f) : x;
  const I8 n = __builtin_convertvector(x * Splat(1.44269504088896341f) - Splat(0.5f), I8);
  const V8 nf = __builtin_convertvector(n, V8);
  V8 r = x - nf * Splat(0.693359375f);
  r = r + nf * Splat(2.12194440e-4f);
  const V8 z = r * r;
  V8 y = Splat(1.9875691500e-4f);
  y = y * r + Splat(1.3981999507e-3f);
  y = y * r + Splat(8.3334519073e-3f);
  y = y * r + Splat(4.1665795894e-2f);
  y = y * r + Splat(1.6666665459e-1f);
  y = y * r + Splat(5.0000001201e-1f);
  y = y * z + r + Splat(1.0f);
  V8 scale;
  const I8 bits = (n + 127) << 23;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

struct Problem {
  const float* qkv;
  const int32_t* lengths;
  float* out;
  int64_t b, t, h, hd;
};

// s[r][j] = q[r] . kt[:, j] for r < kRows and j < lp (a multiple of kLanes), kt [hd][lp];
// m[r] = max_{j < len} s[r][j].
template <int C>
inline void ScoreColumns(const float* const q[kRows], const float* kt, int64_t lp, int64_t hd,
                         int64_t len, int64_t j, float* s, V8 mx[kRows]) {
  V8 a[kRows][C];
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < C; ++c) a[r][c] = Splat(0.0f);
  for (int64_t d = 0; d < hd; ++d) {
    V8 k[C];
    for (int c = 0; c < C; ++c) k[c] = Load(kt + d * lp + j + c * kLanes);
    for (int r = 0; r < kRows; ++r) {
      const V8 qd = Splat(q[r][d]);
      for (int c = 0; c < C; ++c) a[r][c] += qd * k[c];
    }
  }
  for (int c = 0; c < C; ++c) {
    const int64_t j0 = j + c * kLanes;
    if (j0 + kLanes > len) {  // the padding columns must not raise the maximum
      for (int r = 0; r < kRows; ++r)
        for (int64_t k = std::max<int64_t>(len - j0, 0); k < kLanes; ++k) a[r][c][k] = -1e30f;
    }
    for (int r = 0; r < kRows; ++r) {
      Store(s + r * lp + j0, a[r][c]);
      mx[r] = a[r][c] > mx[r] ? a[r][c] : mx[r];
    }
  }
}

void Scores(const float* const q[kRows], const float* kt, int64_t lp, int64_t hd, int64_t len,
            float* s, float m[kRows]) {
  V8 mx[kRows];
  for (int r = 0; r < kRows; ++r) mx[r] = Splat(-1e30f);
  int64_t j = 0;
  for (; j + 2 * kLanes <= lp; j += 2 * kLanes) ScoreColumns<2>(q, kt, lp, hd, len, j, s, mx);
  for (; j < lp; j += kLanes) ScoreColumns<1>(q, kt, lp, hd, len, j, s, mx);
  for (int r = 0; r < kRows; ++r) {
    float v = mx[r][0];
    for (int k = 1; k < kLanes; ++k) v = std::max(v, mx[r][k]);
    m[r] = v;
  }
}

// o[r][c0 : c0 + C * kLanes] = sum_{j < len} p[r][j] v[j][c0 : c0 + C * kLanes], v [len][hd].
template <int C>
void MixColumns(const float* p, int64_t lp, const float* v, int64_t hd, int64_t len, int64_t c0,
                float o[kRows][256]) {
  V8 a[kRows][C];
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < C; ++c) a[r][c] = Splat(0.0f);
  for (int64_t j = 0; j < len; ++j) {
    V8 vv[C];
    for (int c = 0; c < C; ++c) vv[c] = Load(v + j * hd + c0 + c * kLanes);
    for (int r = 0; r < kRows; ++r) {
      const V8 pj = Splat(p[r * lp + j]);
      for (int c = 0; c < C; ++c) a[r][c] += pj * vv[c];
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < C; ++c) Store(o[r] + c0 + c * kLanes, a[r][c]);
}

// One head of one sequence: queries q[i * q_stride], i < lq, attend to the keys and values
// k[j * kv_stride], v[j * kv_stride], j < lk (hd floats each); out[i * out_stride] gets hd
// floats. Values are copied into scratch padded to whole vectors, so any hd <= 256 is served.
struct Span {
  const float* q;
  const float* k;
  const float* v;
  float* out;
  int64_t lq, lk, q_stride, kv_stride, out_stride, hd;
};

void AttendSpan(const Span& A, std::vector<float>& scratch) {
  const int64_t L = A.lk, HD = A.hd, HDP = (HD + kLanes - 1) / kLanes * kLanes;
  const int64_t lp = (L + kLanes - 1) / kLanes * kLanes;
  const size_t need = static_cast<size_t>(HD * lp + L * HDP + kRows * lp);
  if (scratch.size() < need) scratch.resize(need);
  float* kt = scratch.data();  // [HD][lp], zero past L
  float* v = kt + HD * lp;     // [L][HDP], zero past HD
  float* s = v + L * HDP;      // [kRows][lp]
  for (int64_t j = 0; j < L; ++j) {
    const float* k = A.k + j * A.kv_stride;
    for (int64_t d = 0; d < HD; ++d) kt[d * lp + j] = k[d];
    std::memcpy(v + j * HDP, A.v + j * A.kv_stride, HD * sizeof(float));
    std::fill(v + j * HDP + HD, v + (j + 1) * HDP, 0.0f);
  }
  for (int64_t d = 0; d < HD; ++d) std::fill(kt + d * lp + L, kt + (d + 1) * lp, 0.0f);

  alignas(64) float o[kRows][256];
  for (int64_t i0 = 0; i0 < A.lq; i0 += kRows) {
    const int64_t nr = std::min<int64_t>(kRows, A.lq - i0);
    const float* q[kRows];
    for (int r = 0; r < kRows; ++r) q[r] = A.q + (i0 + std::min<int64_t>(r, nr - 1)) * A.q_stride;
    float m[kRows], inv[kRows];
    Scores(q, kt, lp, HD, L, s, m);
    for (int r = 0; r < kRows; ++r) {
      float* sr = s + r * lp;
      V8 acc = Splat(0.0f);
      for (int64_t j = 0; j < lp; j += kLanes) {
        V8 e = ExpNonPositive(Load(sr + j) - Splat(m[r]));
        if (j + kLanes > L) {  // the padding columns past L: exact zeros
          for (int64_t k = L - j; k < kLanes; ++k) e[k] = 0.0f;
        }
        Store(sr + j, e);
        acc += e;
      }
      float sum = 0.0f;
      for (int k = 0; k < kLanes; ++k) sum += acc[k];
      inv[r] = 1.0f / sum;
    }
    int64_t c0 = 0;
    for (; c0 + 2 * kLanes <= HDP; c0 += 2 * kLanes) MixColumns<2>(s, lp, v, HDP, L, c0, o);
    for (; c0 < HDP; c0 += kLanes) MixColumns<1>(s, lp, v, HDP, L, c0, o);
    for (int64_t r = 0; r < nr; ++r) {
      float* dst = A.out + (i0 + r) * A.out_stride;
      for (int64_t d = 0; d < HD; ++d) dst[d] = o[r][d] * inv[r];
    }
  }
}

// Head h of the L tokens of a fused projection (row: [L, 3, H, hd]) attending to each other;
// out [L, H, hd] (head h's columns written).
void AttendSelf(const float* row, float* out, int64_t L, int64_t h, int64_t H, int64_t HD,
                std::vector<float>& scratch) {
  const int64_t D = H * HD, stride = 3 * D;
  const float* q = row + h * HD;
  AttendSpan(Span{q, q + D, q + 2 * D, out, L, L, stride, stride, D, HD}, scratch);
}

void AttendHead(const Problem& P, int64_t task, std::vector<float>& scratch) {
  const int64_t b = task / P.h, h = task % P.h;
  const int64_t T = P.t, HD = P.hd, D = P.h * HD, stride = 3 * D;
  const int64_t L = std::clamp<int64_t>(P.lengths[b], 0, T);
  float* out = P.out + b * T * D + h * HD;
  for (int64_t i = L; i < T; ++i) std::memset(out + i * D, 0, HD * sizeof(float));
  if (L == 0) return;
  AttendSelf(P.qkv + b * T * stride, out, L, h, P.h, HD, scratch);
}

using hyperbatch::ParallelFor;

// Packed sequences: qkv [N, 3, H, hd] holds sequences back to back (and padding); sequence s
// is the tokens [starts[s], starts[s] + lengths[s]) and attends within itself only. Positions
// no sequence covers are zeros.
ffi::Error EncoderAttentionPacked(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv,
                                  ffi::Buffer<ffi::S32> starts, ffi::Buffer<ffi::S32> lengths,
                                  ffi::ResultBuffer<ffi::F32> out) {
  const auto qd = qkv.dimensions();
  if (qd.size() != 4 || qd[1] != 3)
    return ffi::Error::InvalidArgument("packed encoder attention: qkv must be [N, 3, H, hd]");
  const int64_t n = qd[0], h = qd[2], hd = qd[3], segments = lengths.element_count();
  if (hd % kLanes || hd > 256)
    return ffi::Error::InvalidArgument("encoder attention: hd must be a multiple of the vector "
                                       "width (8 floats, 16 with AVX-512), <= 256");
  if (starts.element_count() != segments || out->element_count() != n * h * hd)
    return ffi::Error::InvalidArgument("packed encoder attention: shapes disagree");
  const float* src = qkv.typed_data();
  const int32_t* st = starts.typed_data();
  const int32_t* len = lengths.typed_data();
  float* dst = out->typed_data();
  for (int64_t s = 0; s < segments; ++s)
    if (len[s] < 0 || st[s] < 0 || st[s] + len[s] > n)
      return ffi::Error::InvalidArgument("packed encoder attention: a sequence runs past N");
  std::memset(dst, 0, n * h * hd * sizeof(float));
  const int64_t D = h * hd;
  ParallelFor(pool, segments * h, [=](int64_t task) {
    thread_local std::vector<float> scratch;
    const int64_t s = task / h, head = task % h;
    if (len[s] == 0) return;
    AttendSelf(src + st[s] * 3 * D, dst + st[s] * D + head * hd, len[s], head, h, hd, scratch);
  });
  return ffi::Error::Success();
}

ffi::Error EncoderAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv,
                            ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> out) {
  const auto qd = qkv.dimensions();
  if (qd.size() != 5 || qd[2] != 3)
    return ffi::Error::InvalidArgument("encoder attention: qkv must be [B, T, 3, H, hd]");
  Problem P{qkv.typed_data(), lengths.typed_data(), out->typed_data(), qd[0], qd[1], qd[3], qd[4]};
  if (P.hd % kLanes || P.hd > 256)
    return ffi::Error::InvalidArgument("encoder attention: hd must be a multiple of the vector "
                                       "width (8 floats, 16 with AVX-512), <= 256");
  if (lengths.element_count() != P.b || out->element_count() != P.b * P.t * P.h * P.hd)
    return ffi::Error::InvalidArgument("encoder attention: lengths or out disagree with qkv");
  ParallelFor(pool, P.b * P.h, [&P](int64_t task) {
    thread_local std::vector<float> scratch;
    AttendHead(P, task, scratch);
  });
  return ffi::Error::Success();
}

// Every query of a row attends to every key of its row (self- or cross-attention, no mask):
// q [B, Lq, H, hd] (pre-scaled), k and v [B, Lk, H, hd] -> out [B, Lq, H, hd]; any hd <= 256.
ffi::Error Attention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                     ffi::Buffer<ffi::F32> v, ffi::ResultBuffer<ffi::F32> out) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4)
    return ffi::Error::InvalidArgument("attention: q, k, v must be [B, L, H, hd]");
  const int64_t b = qd[0], lq = qd[1], h = qd[2], hd = qd[3], lk = kd[1];
  if (kd[0] != b || kd[2] != h || kd[3] != hd || vd[0] != b || vd[1] != lk || vd[2] != h ||
      vd[3] != hd || out->element_count() != b * lq * h * hd)
    return ffi::Error::InvalidArgument("attention: q, k, v and out disagree");
  if (hd > 256 || hd < 1 || lk < 1)
    return ffi::Error::InvalidArgument("attention: hd must be 1..256 and Lk >= 1");
  const float* qp = q.typed_data();
  const float* kp = k.typed_data();
  const float* vp = v.typed_data();
  float* op = out->typed_data();
  const int64_t D = h * hd;
  ParallelFor(pool, b * h, [=](int64_t task) {
    thread_local std::vector<float> scratch;
    const int64_t row = task / h, head = task % h;
    const int64_t qo = row * lq * D + head * hd, ko = row * lk * D + head * hd;
    AttendSpan(Span{qp + qo, kp + ko, vp + ko, op + qo, lq, lk, D, D, D, hd}, scratch);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HyperbatchEncoderAttention, EncoderAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // qkv [B, T, 3, H, hd]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths [B]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // out [B, T, H, hd]

XLA_FFI_DEFINE_HANDLER_SYMBOL(HyperbatchEncoderAttentionPacked, EncoderAttentionPacked,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // qkv [N, 3, H, hd]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // starts [S]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths [S]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // out [N, H, hd]

XLA_FFI_DEFINE_HANDLER_SYMBOL(HyperbatchAttention, Attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q [B, Lq, H, hd]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k [B, Lk, H, hd]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v [B, Lk, H, hd]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // out [B, Lq, H, hd]
