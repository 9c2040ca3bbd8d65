// Attention over the slot KV cache for the XLA CPU backend (an XLA FFI custom call).
//
// XLA's CPU code for decode attention is a batched matmul of B*KVH tiny [G, hd] x [hd, S]
// products plus a masked softmax over the whole cache row: per layer it costs several times
// what reading the cache does. This kernel computes, for every query row n, token t, KV head k:
//
//   out[n, t, k, g, :] = softmax_w(scale * q[n, t, k, g, :] . K[rows[n], k, :, w]) V[rows[n], k, w, :]
//
// over the visible keys w = lo .. qpos[n, t] only (lo = qpos - window + 1 with a sliding window,
// else 0), reading each key and value once for the G query heads that share it. A row whose
// cache row is out of range, or whose position is outside the cache, gets zeros (padding and
// idle slots). Every row is computed on its own, in a fixed order, so its result does not depend
// on what else is in the batch.
//
// Layouts (float32, row-major): q/out [N, T, KVH, G, HD]; k cache [R, KVH, HD, S] (transposed);
// v cache [R, KVH, S, HD]; rows [N]; qpos [N, T]. Supported: 1 <= G <= 8 query heads per KV head.
//
// Work is split over (n, k) pairs, claimed from an atomic counter by the calling thread and by
// helpers scheduled on XLA's intra-op thread pool. The caller waits only for pairs already
// claimed, never for a helper to start, so a busy pool cannot deadlock it.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 8;
typedef float V8 __attribute__((vector_size(32)));
typedef float V8u __attribute__((vector_size(32), aligned(4)));  // unaligned loads and stores

inline V8 Load(const float* p) { return *reinterpret_cast<const V8u*>(p); }
inline void Store(float* p, V8 v) { *reinterpret_cast<V8u*>(p) = v; }
inline V8 Splat(float x) { return V8{x, x, x, x, x, x, x, x}; }

struct Job {
  const float* q;
  const float* k;
  const float* v;
  const int32_t* rows;
  const int32_t* qpos;
  float* out;
  int64_t n, t, kvh, g, hd, r, s, window;
  float scale;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

// sc[g * ld + w] = scale * q[g] . K[:, w] for w < len. K points at the first visible key of a
// [HD][S] block; `room` keys are readable from there (a vector may read past len, not past room).
template <int G>
void Scores(const float* q, const float* K, int64_t S, int64_t HD, int64_t len, int64_t room,
            float scale, float* sc, int64_t ld) {
  int64_t w0 = 0;
  for (; w0 < len && w0 + kLanes <= room; w0 += kLanes) {
    V8 acc[G];
    for (int g = 0; g < G; ++g) acc[g] = Splat(0.0f);
    for (int64_t h = 0; h < HD; ++h) {
      const V8 kv = Load(K + h * S + w0);
      for (int g = 0; g < G; ++g) acc[g] += Splat(q[g * HD + h]) * kv;
    }
    for (int g = 0; g < G; ++g) Store(sc + g * ld + w0, acc[g] * Splat(scale));
  }
  for (int64_t w = w0; w < len; ++w) {  // the last keys of a cache row
    for (int g = 0; g < G; ++g) {
      float a = 0.0f;
      for (int64_t h = 0; h < HD; ++h) a += q[g * HD + h] * K[h * S + w];
      sc[g * ld + w] = a * scale;
    }
  }
}

// out[g][h0 : h0 + 8C] = sum_{w < len} p[g * ld + w] * V[w][h0 : h0 + 8C], V a [S][HD] block.
template <int G, int C>
void MixColumns(const float* p, int64_t ld, const float* V, int64_t HD, int64_t len, int64_t h0,
                float* out) {
  V8 acc[G][C];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < C; ++c) acc[g][c] = Splat(0.0f);
  for (int64_t w = 0; w < len; ++w) {
    const float* vw = V + w * HD + h0;
    V8 vv[C];
    for (int c = 0; c < C; ++c) vv[c] = Load(vw + c * kLanes);
    for (int g = 0; g < G; ++g) {
      const V8 pw = Splat(p[g * ld + w]);
      for (int c = 0; c < C; ++c) acc[g][c] += pw * vv[c];
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < C; ++c) Store(out + g * HD + h0 + c * kLanes, acc[g][c]);
}

// out[g][:] = sum_{w < len} p[g * ld + w] * V[w][:]: 32 columns at a time, then 8, then single.
template <int G>
void Mix(const float* p, int64_t ld, const float* V, int64_t HD, int64_t len, float* out) {
  int64_t h0 = 0;
  for (; h0 + 4 * kLanes <= HD; h0 += 4 * kLanes) MixColumns<G, 4>(p, ld, V, HD, len, h0, out);
  for (; h0 + kLanes <= HD; h0 += kLanes) MixColumns<G, 1>(p, ld, V, HD, len, h0, out);
  for (; h0 < HD; ++h0) {
    for (int g = 0; g < G; ++g) {
      float a = 0.0f;
      for (int64_t w = 0; w < len; ++w) a += p[g * ld + w] * V[w * HD + h0];
      out[g * HD + h0] = a;
    }
  }
}

template <int G>
void RunPair(const Job& j, int64_t pair, std::vector<float>& scratch) {
  const int64_t n = pair / j.kvh, kh = pair % j.kvh;
  const int64_t HD = j.hd, S = j.s;
  const int32_t row = j.rows[n];
  for (int64_t t = 0; t < j.t; ++t) {
    const int64_t qo = (((n * j.t + t) * j.kvh + kh) * G) * HD;
    float* o = j.out + qo;
    const int32_t p = j.qpos[n * j.t + t];
    if (row < 0 || row >= j.r || p < 0 || p >= S) {
      std::fill(o, o + G * HD, 0.0f);
      continue;
    }
    const int64_t lo = j.window > 0 ? std::max<int64_t>(0, p - j.window + 1) : 0;
    const int64_t len = p + 1 - lo;
    const int64_t ld = (len + kLanes - 1) / kLanes * kLanes;
    const float* K = j.k + ((row * j.kvh + kh) * HD) * S + lo;
    const float* V = j.v + ((row * j.kvh + kh) * S + lo) * HD;
    if (static_cast<int64_t>(scratch.size()) < G * ld) scratch.resize(G * ld);
    float* sc = scratch.data();
    Scores<G>(j.q + qo, K, S, HD, len, S - lo, j.scale, sc, ld);
    float inv[G];
    for (int g = 0; g < G; ++g) {
      float* s = sc + g * ld;
      float m = s[0];
      for (int64_t w = 1; w < len; ++w) m = std::max(m, s[w]);
      float sum = 0.0f;
      for (int64_t w = 0; w < len; ++w) {
        s[w] = std::exp(s[w] - m);
        sum += s[w];
      }
      inv[g] = 1.0f / sum;
    }
    Mix<G>(sc, ld, V, HD, len, o);
    for (int g = 0; g < G; ++g)
      for (int64_t h = 0; h < HD; ++h) o[g * HD + h] *= inv[g];
  }
}

template <int G>
void Work(Job& j) {
  thread_local std::vector<float> scratch;
  const int64_t total = j.n * j.kvh;
  for (int64_t pair; (pair = j.next.fetch_add(1, std::memory_order_relaxed)) < total;) {
    RunPair<G>(j, pair, scratch);
    j.done.fetch_add(1, std::memory_order_release);
  }
}

using WorkFn = void (*)(Job&);

WorkFn ForGroup(int64_t g) {
  switch (g) {
    case 1: return Work<1>;
    case 2: return Work<2>;
    case 3: return Work<3>;
    case 4: return Work<4>;
    case 5: return Work<5>;
    case 6: return Work<6>;
    case 7: return Work<7>;
    case 8: return Work<8>;
    default: return nullptr;
  }
}

ffi::Error Attention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                     ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> rows,
                     ffi::Buffer<ffi::S32> qpos, ffi::ResultBuffer<ffi::F32> out,
                     int64_t window) {
  const auto qd = q.dimensions();
  const auto kd = k.dimensions();
  const auto vd = v.dimensions();
  if (qd.size() != 5 || kd.size() != 4 || vd.size() != 4)
    return ffi::Error::InvalidArgument("attention: q must be rank 5, the caches rank 4");
  auto job = std::make_shared<Job>();
  job->n = qd[0], job->t = qd[1], job->kvh = qd[2], job->g = qd[3], job->hd = qd[4];
  job->r = kd[0], job->s = kd[3], job->window = window;
  if (kd[1] != job->kvh || kd[2] != job->hd || vd[0] != job->r || vd[1] != job->kvh ||
      vd[2] != job->s || vd[3] != job->hd || rows.element_count() != job->n ||
      qpos.element_count() != job->n * job->t)
    return ffi::Error::InvalidArgument("attention: q, caches, rows and qpos disagree in shape");
  const WorkFn work = ForGroup(job->g);
  if (work == nullptr)
    return ffi::Error::InvalidArgument("attention: needs 1 to 8 query heads per KV head");
  job->q = q.typed_data(), job->k = k.typed_data(), job->v = v.typed_data();
  job->rows = rows.typed_data(), job->qpos = qpos.typed_data(), job->out = out->typed_data();
  job->scale = 1.0f / std::sqrt(static_cast<float>(job->hd));

  const int64_t total = job->n * job->kvh;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), total) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([job, work] { work(*job); });
  work(*job);
  while (job->done.load(std::memory_order_acquire) < total) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HyperbatchAttention, Attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k cache
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v cache
                                  .Arg<ffi::Buffer<ffi::S32>>()  // rows
                                  .Arg<ffi::Buffer<ffi::S32>>()  // qpos
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out
                                  .Attr<int64_t>("window"));
