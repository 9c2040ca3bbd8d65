// One attention layer over the slot KV cache for the XLA CPU backend (an XLA FFI custom call).
//
// XLA's CPU code for decode attention is a batched matmul of B*KVH tiny [G, hd] x [hd, S]
// products plus a masked softmax over the whole cache row, and the RoPE and cache writes around
// it are separate passes: together several times what reading the cache costs. This kernel
// takes the layer's raw q/k/v projections of N tokens, each with its cache row and position,
// and in two phases
//
//   1. writes RoPE(k) and v of every token into its cache row at its position (in place: the
//      caches are aliased to outputs), then
//   2. computes, for every token n and KV head k, over the visible keys w = lo .. pos[n]
//      (lo = pos - window + 1 with a sliding window, else 0) -- its own included:
//
//        out[n, k, g, :] = softmax_w(RoPE(q[n, k, g]) . K[rows[n], k, :, w] / sqrt(hd))
//                          V[rows[n], k, w, :]
//
//      reading each key and value once for the G query heads that share it.
//
// A token whose cache row is out of range, or whose position is outside the cache, writes
// nothing and gets zeros (padding and idle slots). Each token is computed on its own, in a
// fixed order, so its result does not depend on what else is in the call; the tokens of one
// call may share a row (a prompt's tokens see each other through phase 1).
//
// Layouts (float32, row-major): qkv [N, KVH, G+2, HD] (per KV head: G query heads, k, v);
// cos/sin [N, HD] (RoPE tables at each token's position); k cache [R, KVH, T, HD, 16] (keys in
// tiles of 16 positions, T = ceil(S / 16), each tile transposed: position p, dim h at
// [p / 16, h, p % 16]); v cache [R, KVH, S, HD]; rows, pos [N]; out [N, KVH, G, HD].
// Supported: 1 <= G <= 8.
//
// Why tiles: a token's live keys are then one contiguous run of tiles (4 KiB each at HD = 64),
// read in order, and each tile is a [HD] x [16] block that the scores consume as plain
// vectors. A [HD, S] layout (one row per dimension) spreads the same keys over HD short runs
// S floats apart -- at S = 1024 all in one L1 set; on the 2-core CPU the tiles made 30 decode
// layers at batch 128 1.2-1.4x faster at 40-200 live positions.
//
// Work is claimed from an atomic counter by the calling thread and by helpers scheduled on
// XLA's intra-op thread pool. The caller waits only for work already claimed, never for a
// helper to start, so a busy pool cannot deadlock it.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "cpu_parallel.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 8;
#if defined(__AVX512VL__)
constexpr int kRegisters = 32;  // vector registers (AVX-512VL gives 8-lane code 32 of them)
#else
constexpr int kRegisters = 16;
#endif
constexpr int64_t kTile = 16;  // key positions per tile of the k cache
inline int64_t TilesFor(int64_t positions) { return (positions + kTile - 1) / kTile; }
constexpr int kMaxGroup = 8;
constexpr int64_t kWriteChunk = 16;  // tokens per unit of phase 1
typedef float V8 __attribute__((vector_size(32)));
typedef float V8u __attribute__((vector_size(32), aligned(4)));  // unaligned loads and stores

inline V8 Load(const float* p) { return *reinterpret_cast<const V8u*>(p); }
inline void Store(float* p, V8 v) { *reinterpret_cast<V8u*>(p) = v; }
inline V8 Splat(float x) { return V8{x, x, x, x, x, x, x, x}; }

struct Layer {
  const float* qkv;
  const float* cos;
  const float* sin;
  float* k;  // the caches, updated in place
  float* v;
  const int32_t* rows;
  const int32_t* pos;
  float* out;
  int64_t n, kvh, g, hd, r, s, tiles, window;  // tiles = ceil(s / kTile)
  float scale;

  // The key tiles of (row, KV head) [tiles][hd][kTile], and its values [s][hd].
  float* Keys(int64_t row, int64_t kh) const { return k + (row * kvh + kh) * tiles * hd * kTile; }
  float* Values(int64_t row, int64_t kh) const { return v + (row * kvh + kh) * s * hd; }

  const float* Head(int64_t i, int64_t kh, int64_t j) const {
    return qkv + ((i * kvh + kh) * (g + 2) + j) * hd;
  }
  bool Live(int64_t i) const {
    return rows[i] >= 0 && rows[i] < r && pos[i] >= 0 && pos[i] < s;
  }
  // The first key token i sees (its sliding window's start).
  int64_t Lo(int64_t i) const {
    return window > 0 ? std::max<int64_t>(0, pos[i] - window + 1) : 0;
  }
};

// dst = x * cos + rotate_half(x) * sin, rotate_half(x) = [-x[hd/2:], x[:hd/2]] (as XLA does it).
inline void Rope(const float* x, const float* cos, const float* sin, int64_t hd, float* dst) {
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < half; ++h) dst[h] = x[h] * cos[h] - x[h + half] * sin[h];
  for (int64_t h = half; h < hd; ++h) dst[h] = x[h] * cos[h] + x[h - half] * sin[h];
}

// Phase 1 for tokens [first, first + kWriteChunk): RoPE(k) and v into their cache rows.
void WriteTokens(const Layer& L, int64_t chunk) {
  float kr[1024];
  const int64_t HD = L.hd;
  for (int64_t i = chunk * kWriteChunk; i < std::min(L.n, (chunk + 1) * kWriteChunk); ++i) {
    if (!L.Live(i)) continue;
    const int64_t row = L.rows[i], p = L.pos[i];
    for (int64_t kh = 0; kh < L.kvh; ++kh) {
      Rope(L.Head(i, kh, L.g), L.cos + i * HD, L.sin + i * HD, HD, kr);
      float* K = L.Keys(row, kh) + (p / kTile) * HD * kTile + p % kTile;
      for (int64_t h = 0; h < HD; ++h) K[h * kTile] = kr[h];
      std::memcpy(L.Values(row, kh) + p * HD, L.Head(i, kh, L.g + 1), HD * sizeof(float));
    }
  }
}

// sc[g * ld + j * kTile + w] = scale * q[g] . key w of tile j, for the tiles j < tiles from
// K (each [HD][kTile]; consecutive tiles are consecutive in memory). ld >= tiles * kTile.
// A tile goes in one pass (G * 2 accumulators) for G <= 4, else in two halves.
template <int G>
void Scores(const float* q, const float* K, int64_t HD, int64_t tiles, float scale, float* sc,
            int64_t ld) {
  constexpr int C = G <= 4 ? kTile / kLanes : 1;  // vectors of keys per pass
  for (int64_t j = 0; j < tiles; ++j) {
    for (int64_t w0 = 0; w0 < kTile; w0 += C * kLanes) {
      const float* kt = K + j * HD * kTile + w0;
      V8 acc[G][C];
      for (int g = 0; g < G; ++g)
        for (int c = 0; c < C; ++c) acc[g][c] = Splat(0.0f);
      for (int64_t h = 0; h < HD; ++h) {
        V8 kv[C];
        for (int c = 0; c < C; ++c) kv[c] = Load(kt + h * kTile + c * kLanes);
        for (int g = 0; g < G; ++g) {
          const V8 qg = Splat(q[g * HD + h]);
          for (int c = 0; c < C; ++c) acc[g][c] += qg * kv[c];
        }
      }
      float* out = sc + j * kTile + w0;
      for (int g = 0; g < G; ++g)
        for (int c = 0; c < C; ++c) Store(out + g * ld + c * kLanes, acc[g][c] * Splat(scale));
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

// out[g][:] = sum_{w < len} p[g * ld + w] * V[w][:]: 64 columns at a time where G * 8
// accumulators fit in the registers (HD = 64 then reads each value row once: 1.2x at 400-600
// positions), then 32, 8, single.
template <int G>
void Mix(const float* p, int64_t ld, const float* V, int64_t HD, int64_t len, float* out) {
  int64_t h0 = 0;
  if (G * 8 + G + 1 <= kRegisters)
    for (; h0 + 8 * kLanes <= HD; h0 += 8 * kLanes) MixColumns<G, 8>(p, ld, V, HD, len, h0, out);
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

// Phase 2 for one (token, KV head) pair.
template <int G>
void AttendPair(const Layer& L, int64_t pair, std::vector<float>& scratch) {
  const int64_t i = pair / L.kvh, kh = pair % L.kvh;
  const int64_t HD = L.hd;
  float* o = L.out + ((i * L.kvh + kh) * G) * HD;
  if (!L.Live(i)) {
    std::fill(o, o + G * HD, 0.0f);
    return;
  }
  const int64_t row = L.rows[i], p = L.pos[i], lo = L.Lo(i);
  const int64_t len = p + 1 - lo;
  // the scores cover whole tiles, from the one holding key lo to the one holding key p
  const int64_t first = lo / kTile, tiles = p / kTile + 1 - first, off = lo - first * kTile;
  const int64_t ld = tiles * kTile;
  if (static_cast<int64_t>(scratch.size()) < G * (ld + HD)) scratch.resize(G * (ld + HD));
  float* q = scratch.data();  // [G][HD], RoPE'd
  float* sc = q + G * HD;     // [G][ld]
  for (int g = 0; g < G; ++g) Rope(L.Head(i, kh, g), L.cos + i * HD, L.sin + i * HD, HD, q + g * HD);
  Scores<G>(q, L.Keys(row, kh) + first * HD * kTile, HD, tiles, L.scale, sc, ld);
  const float* V = L.Values(row, kh) + lo * HD;
  float inv[G];
  for (int g = 0; g < G; ++g) {
    float* s = sc + g * ld + off;
    float m = s[0];
    for (int64_t w = 1; w < len; ++w) m = std::max(m, s[w]);
    float sum = 0.0f;
    for (int64_t w = 0; w < len; ++w) {
      s[w] = std::exp(s[w] - m);
      sum += s[w];
    }
    inv[g] = 1.0f / sum;
  }
  Mix<G>(sc + off, ld, V, HD, len, o);
  for (int g = 0; g < G; ++g)
    for (int64_t h = 0; h < HD; ++h) o[g * HD + h] *= inv[g];
}

using hyperbatch::ParallelFor;

template <int G>
void Attend(ffi::ThreadPool& pool, const Layer& L) {
  ParallelFor(pool, L.n * L.kvh, [&L](int64_t pair) {
    thread_local std::vector<float> scratch;
    AttendPair<G>(L, pair, scratch);
  });
}

using AttendFn = void (*)(ffi::ThreadPool&, const Layer&);

AttendFn ForGroup(int64_t g) {
  switch (g) {
    case 1: return Attend<1>;
    case 2: return Attend<2>;
    case 3: return Attend<3>;
    case 4: return Attend<4>;
    case 5: return Attend<5>;
    case 6: return Attend<6>;
    case 7: return Attend<7>;
    case 8: return Attend<8>;
    default: return nullptr;
  }
}

ffi::Error AttentionLayer(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv,
                          ffi::Buffer<ffi::F32> cos, ffi::Buffer<ffi::F32> sin,
                          ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                          ffi::Buffer<ffi::S32> rows, ffi::Buffer<ffi::S32> pos,
                          ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> k_out,
                          ffi::ResultBuffer<ffi::F32> v_out, int64_t window) {
  const auto qd = qkv.dimensions();
  const auto kd = k.dimensions();
  const auto vd = v.dimensions();
  if (qd.size() != 4 || kd.size() != 5 || vd.size() != 4)
    return ffi::Error::InvalidArgument("attention: qkv and v must be rank 4, k rank 5");
  Layer L;
  L.n = qd[0], L.kvh = qd[1], L.g = qd[2] - 2, L.hd = qd[3];
  L.r = vd[0], L.s = vd[2], L.tiles = kd[2], L.window = window;
  if (kd[0] != L.r || kd[1] != L.kvh || L.tiles != TilesFor(L.s) || kd[3] != L.hd ||
      kd[4] != kTile || vd[1] != L.kvh || vd[3] != L.hd || cos.element_count() != L.n * L.hd ||
      sin.element_count() != L.n * L.hd ||
      rows.element_count() != L.n || pos.element_count() != L.n)
    return ffi::Error::InvalidArgument("attention: qkv, tables, caches, rows, pos disagree");
  const AttendFn attend = ForGroup(L.g);
  if (attend == nullptr || L.hd > 1024 || L.hd % 2)
    return ffi::Error::InvalidArgument("attention: needs 1-8 query heads per KV head, even hd");
  if (k_out->typed_data() != k.typed_data() || v_out->typed_data() != v.typed_data())
    return ffi::Error::Internal("attention: the caches must be aliased to the outputs");
  L.qkv = qkv.typed_data(), L.cos = cos.typed_data(), L.sin = sin.typed_data();
  L.k = k_out->typed_data(), L.v = v_out->typed_data();
  L.rows = rows.typed_data(), L.pos = pos.typed_data(), L.out = out->typed_data();
  L.scale = 1.0f / std::sqrt(static_cast<float>(L.hd));

  ParallelFor(pool, (L.n + kWriteChunk - 1) / kWriteChunk,
              [&L](int64_t chunk) { WriteTokens(L, chunk); });
  attend(pool, L);
  return ffi::Error::Success();
}

// The first lens[q] positions of K/V rows src_rows[q] into rows dst_rows[q] of another cache
// (prefix store -> slot before a prefill, slot -> store after), for every q whose rows are in
// range; the rest of the destination is left as it is. k [R, KVH, T, HD, 16], v [R, KVH, S, HD]
// on both sides (their own R, S and T = ceil(S / 16)). Only the positions a prefix has are
// copied, not the store's whole length: its whole tiles in one run, then the last tile's part.
ffi::Error CopyPositions(ffi::Buffer<ffi::F32> src_k, ffi::Buffer<ffi::F32> src_v,
                         ffi::Buffer<ffi::F32> dst_k, ffi::Buffer<ffi::F32> dst_v,
                         ffi::Buffer<ffi::S32> src_rows, ffi::Buffer<ffi::S32> dst_rows,
                         ffi::Buffer<ffi::S32> lens, ffi::ResultBuffer<ffi::F32> k_out,
                         ffi::ResultBuffer<ffi::F32> v_out) {
  const auto sk = src_k.dimensions(), sv = src_v.dimensions();
  const auto dk = dst_k.dimensions(), dv = dst_v.dimensions();
  if (sk.size() != 5 || sv.size() != 4 || dk.size() != 5 || dv.size() != 4)
    return ffi::Error::InvalidArgument("copy: k caches must be rank 5, v caches rank 4");
  const int64_t rs = sv[0], kvh = sv[1], ps = sv[2], hd = sv[3], rd = dv[0], sd = dv[2];
  const int64_t ts = sk[2], td = dk[2], q = src_rows.element_count();
  if (sk[0] != rs || sk[1] != kvh || ts != TilesFor(ps) || sk[3] != hd ||
      sk[4] != kTile || dk[0] != rd || dk[1] != kvh || td != TilesFor(sd) ||
      dk[3] != hd || dk[4] != kTile || dv[1] != kvh || dv[3] != hd ||
      dst_rows.element_count() != q || lens.element_count() != q)
    return ffi::Error::InvalidArgument("copy: caches, rows and lengths disagree");
  if (k_out->typed_data() != dst_k.typed_data() || v_out->typed_data() != dst_v.typed_data())
    return ffi::Error::Internal("copy: the destination must be aliased to the outputs");
  const float* kin = src_k.typed_data();
  const float* vin = src_v.typed_data();
  float* kd = k_out->typed_data();
  float* vd = v_out->typed_data();
  const int64_t tile = hd * kTile;  // floats per key tile
  for (int64_t i = 0; i < q; ++i) {
    const int64_t a = src_rows.typed_data()[i], b = dst_rows.typed_data()[i];
    const int64_t n = std::min<int64_t>({lens.typed_data()[i], ps, sd});
    if (a < 0 || a >= rs || b < 0 || b >= rd || n <= 0) continue;
    const int64_t whole = n / kTile, rest = n % kTile;
    for (int64_t kh = 0; kh < kvh; ++kh) {
      const float* ks = kin + (a * kvh + kh) * ts * tile;
      float* kt = kd + (b * kvh + kh) * td * tile;
      std::memcpy(kt, ks, whole * tile * sizeof(float));
      for (int64_t h = 0; rest > 0 && h < hd; ++h)
        std::memcpy(kt + whole * tile + h * kTile, ks + whole * tile + h * kTile,
                    rest * sizeof(float));
      std::memcpy(vd + (b * kvh + kh) * sd * hd, vin + (a * kvh + kh) * ps * hd,
                  n * hd * sizeof(float));
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HyperbatchCopyPositions, CopyPositions,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // source k
                                  .Arg<ffi::Buffer<ffi::F32>>()  // source v
                                  .Arg<ffi::Buffer<ffi::F32>>()  // destination k (aliased)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // destination v (aliased)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // source rows
                                  .Arg<ffi::Buffer<ffi::S32>>()  // destination rows
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths
                                  .Ret<ffi::Buffer<ffi::F32>>()  // k_out
                                  .Ret<ffi::Buffer<ffi::F32>>());  // v_out

XLA_FFI_DEFINE_HANDLER_SYMBOL(HyperbatchAttentionLayer, AttentionLayer,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // qkv
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cos
                                  .Arg<ffi::Buffer<ffi::F32>>()  // sin
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k cache (aliased to k_out)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v cache (aliased to v_out)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // rows
                                  .Arg<ffi::Buffer<ffi::S32>>()  // pos
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out
                                  .Ret<ffi::Buffer<ffi::F32>>()  // k_out
                                  .Ret<ffi::Buffer<ffi::F32>>()  // v_out
                                  .Attr<int64_t>("window"));
