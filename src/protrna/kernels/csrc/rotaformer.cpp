// Fused CPU kernels for the RotaFormer head's non-matrix work (see protrna/kernels/__init__.py).
//
// Each call works on one chunk of rows on the calling thread: the head runs its chunks on its own
// worker threads, and nothing here opens a thread pool. Inputs are float32 or bfloat16; every
// sum, mean and exponential is taken in float32.
//
// The entry points are plain C functions of data pointers, sizes and strides, which the Python
// side (protrna/kernels/__init__.py) checks and calls through ctypes; ctypes releases the GIL for
// the length of each call, so chunk threads run them side by side. Without torch/extension.h or
// pybind11 the file compiles in seconds rather than a minute or more.

#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>

#include <cstdint>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();

using BFloat16 = c10::BFloat16;

// ---- loads and stores in float32 -------------------------------------------------------------

inline void to_float(const float* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }

inline void to_float(const BFloat16* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

inline void from_float(const float* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }

inline void from_float(const float* src, BFloat16* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<BFloat16>(src[i]);  // round to nearest even
}

// A float32 view of n values: the values themselves for float32, a converted copy otherwise.
inline const float* as_float(const float* src, float*, int64_t) { return src; }
inline const float* as_float(const BFloat16* src, float* scratch, int64_t n) {
  to_float(src, scratch, n);
  return scratch;
}

inline float lane_sum(const Vec& v) {
  float lanes[kLanes];
  v.store(lanes);
  float sum = 0.f;
  for (int64_t i = 0; i < kLanes; ++i) sum += lanes[i];
  return sum;
}

inline Vec sigmoid(const Vec& x) {
  const Vec one(1.f);
  return one / (one + x.neg().exp_u20());
}

inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

// Mean and 1/sqrt(variance + eps) of n floats, in two passes (as PyTorch's layer norm: no
// cancellation in sum(x^2) - n mean^2).
inline void moments(const float* x, int64_t n, float eps, float& mean, float& rstd) {
  Vec acc(0.f);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) acc += Vec::loadu(x + i);
  float sum = lane_sum(acc);
  for (; i < n; ++i) sum += x[i];
  mean = sum / n;
  const Vec m(mean);
  Vec squares(0.f);
  i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Vec d = Vec::loadu(x + i) - m;
    squares = at::vec::fmadd(d, d, squares);
  }
  float var = lane_sum(squares);
  for (; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  rstd = 1.f / std::sqrt(var / n + eps);
}

// ---- layer norm, channels last: (A, B, C) any strides with contiguous channels => contiguous --

template <typename In, typename Out>
void layer_norm_last(const In* base, int64_t A, int64_t B, int64_t C, int64_t stride_a, int64_t stride_b,
                     const float* weight, const float* bias, float eps, Out* target) {
  std::vector<float> scratch(C), result(C);
  for (int64_t a = 0; a < A; ++a) {
    for (int64_t b = 0; b < B; ++b) {
      const float* row = as_float(base + a * stride_a + b * stride_b, scratch.data(), C);
      float mean, rstd;
      moments(row, C, eps, mean, rstd);
      Out* dst = target + (a * B + b) * C;
      float* y = std::is_same_v<Out, float> ? reinterpret_cast<float*>(dst) : result.data();
      const Vec m(mean), r(rstd);
      int64_t c = 0;
      for (; c + kLanes <= C; c += kLanes) {
        Vec v = (Vec::loadu(row + c) - m) * r;
        at::vec::fmadd(v, Vec::loadu(weight + c), Vec::loadu(bias + c)).store(y + c);
      }
      for (; c < C; ++c) y[c] = (row[c] - mean) * rstd * weight[c] + bias[c];
      if constexpr (!std::is_same_v<Out, float>) from_float(y, dst, C);
    }
  }
}

// ---- layer norm, channels first: (C, P) with contiguous positions => (P, C) contiguous --------

template <typename In, typename Out>
void layer_norm_first(const In* base, int64_t C, int64_t P, int64_t stride_c, const float* weight,
                      const float* bias, float eps, Out* target) {
  // A tile of kLanes positions x C channels, normalised lane-wise, then written row by row.
  std::vector<float> tile(C * kLanes), converted(kLanes), column(C);
  const Vec inverse_c(1.f / C), epsilon(eps);
  int64_t p0 = 0;
  for (; p0 + kLanes <= P; p0 += kLanes) {
    Vec sum(0.f);
    for (int64_t c = 0; c < C; ++c) {
      Vec v = Vec::loadu(as_float(base + c * stride_c + p0, converted.data(), kLanes));
      v.store(tile.data() + c * kLanes);
      sum += v;
    }
    const Vec mean = sum * inverse_c;
    Vec squares(0.f);
    for (int64_t c = 0; c < C; ++c) {
      Vec d = Vec::loadu(tile.data() + c * kLanes) - mean;
      squares = at::vec::fmadd(d, d, squares);
    }
    const Vec rstd = Vec(1.f) / at::vec::fmadd(squares, inverse_c, epsilon).sqrt();
    for (int64_t c = 0; c < C; ++c) {
      Vec v = (Vec::loadu(tile.data() + c * kLanes) - mean) * rstd;
      at::vec::fmadd(v, Vec(weight[c]), Vec(bias[c])).store(tile.data() + c * kLanes);
    }
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      for (int64_t c = 0; c < C; ++c) column[c] = tile[c * kLanes + lane];
      from_float(column.data(), target + (p0 + lane) * C, C);
    }
  }
  for (int64_t p = p0; p < P; ++p) {  // the last positions, one at a time
    for (int64_t c = 0; c < C; ++c) column[c] = static_cast<float>(base[c * stride_c + p]);
    float mean, rstd;
    moments(column.data(), C, eps, mean, rstd);
    for (int64_t c = 0; c < C; ++c) column[c] = (column[c] - mean) * rstd * weight[c] + bias[c];
    from_float(column.data(), target + p * C, C);
  }
}

// ---- softmax of logits + bias over the last dimension ------------------------------------------

template <typename In, typename Bias, typename Out>
void softmax_with_bias(const In* x, const Bias* b, bool shared_bias, int64_t N, int64_t L, int64_t S, Out* y) {
  std::vector<float> row(S), scratch(S), bias_row(S);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t r = 0; r < L; ++r) {
      const float* xs = as_float(x + (n * L + r) * S, scratch.data(), S);
      const float* bs = as_float(b + ((shared_bias ? 0 : n) * L + r) * S, bias_row.data(), S);
      Vec top(-std::numeric_limits<float>::infinity());
      int64_t k = 0;
      for (; k + kLanes <= S; k += kLanes) {
        Vec v = Vec::loadu(xs + k) + Vec::loadu(bs + k);
        v.store(row.data() + k);
        top = at::vec::maximum(top, v);
      }
      float lanes[kLanes];
      top.store(lanes);
      float most = -std::numeric_limits<float>::infinity();
      for (int64_t i = 0; i < kLanes; ++i) most = std::max(most, lanes[i]);
      for (; k < S; ++k) {
        row[k] = xs[k] + bs[k];
        most = std::max(most, row[k]);
      }
      const Vec shift(most);
      Vec total(0.f);
      k = 0;
      for (; k + kLanes <= S; k += kLanes) {
        Vec e = (Vec::loadu(row.data() + k) - shift).exp_u20();
        e.store(row.data() + k);
        total += e;
      }
      float sum = lane_sum(total);
      for (; k < S; ++k) {
        row[k] = std::exp(row[k] - most);
        sum += row[k];
      }
      const float inverse = 1.f / sum;
      const Vec scale(inverse);
      k = 0;
      for (; k + kLanes <= S; k += kLanes) (Vec::loadu(row.data() + k) * scale).store(row.data() + k);
      for (; k < S; ++k) row[k] *= inverse;
      from_float(row.data(), y + (n * L + r) * S, S);  // y may be x itself: row holds the values
    }
  }
}

// ---- gated triangle operand, written channel-first ----------------------------------------------

template <typename In, typename Out>
void gated_operand(const In* y, const bool* keep, int64_t P, int64_t C, Out* target, int64_t stride_c) {
  constexpr int64_t kTile = 16;  // positions per tile: a 16 x C float tile stays in L1
  std::vector<float> tile(kTile * C), scratch(2 * C), column(kTile);
  for (int64_t p0 = 0; p0 < P; p0 += kTile) {
    const int64_t count = std::min(kTile, P - p0);
    for (int64_t i = 0; i < count; ++i) {
      float* dst = tile.data() + i * C;
      if (keep != nullptr && !keep[p0 + i]) {
        std::fill(dst, dst + C, 0.f);
        continue;
      }
      const float* row = as_float(y + (p0 + i) * 2 * C, scratch.data(), 2 * C);  // [value | gate]
      int64_t c = 0;
      for (; c + kLanes <= C; c += kLanes) (Vec::loadu(row + c) * sigmoid(Vec::loadu(row + C + c))).store(dst + c);
      for (; c < C; ++c) dst[c] = row[c] * sigmoid(row[C + c]);
    }
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t i = 0; i < count; ++i) column[i] = tile[i * C + c];
      from_float(column.data(), target + c * stride_c + p0, count);
    }
  }
}

// ---- residual add, optionally gated --------------------------------------------------------------

template <typename Value, typename Gate>
void add_gated(float* base, int64_t A, int64_t B, int64_t C, int64_t stride_a, int64_t stride_b, const Value* v,
               const Gate* g) {
  std::vector<float> values(C), gates(C);
  for (int64_t a = 0; a < A; ++a) {
    for (int64_t b = 0; b < B; ++b) {
      float* dst = base + a * stride_a + b * stride_b;
      const int64_t offset = (a * B + b) * C;
      const float* vs = as_float(v + offset, values.data(), C);
      int64_t c = 0;
      if (g == nullptr) {
        for (; c + kLanes <= C; c += kLanes) (Vec::loadu(dst + c) + Vec::loadu(vs + c)).store(dst + c);
        for (; c < C; ++c) dst[c] += vs[c];
      } else {
        const float* gs = as_float(g + offset, gates.data(), C);
        for (; c + kLanes <= C; c += kLanes) {
          at::vec::fmadd(Vec::loadu(vs + c), sigmoid(Vec::loadu(gs + c)), Vec::loadu(dst + c)).store(dst + c);
        }
        for (; c < C; ++c) dst[c] += vs[c] * sigmoid(gs[c]);
      }
    }
  }
}

// ---- entry points: pointers as integers, dtypes as 0 (float32) or 1 (bfloat16) -----------------

template <typename T>
T* pointer(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// Calls body<A, B>() with A and B the element types of two dtype codes.
template <typename Body>
void two_dtypes(int first, int second, Body body) {
  if (first == 0 && second == 0) {
    body(float{}, float{});
  } else if (first == 0) {
    body(float{}, BFloat16{});
  } else if (second == 0) {
    body(BFloat16{}, float{});
  } else {
    body(BFloat16{}, BFloat16{});
  }
}

}  // namespace

extern "C" {

void protrna_layer_norm_last(uintptr_t x, int x_dtype, int64_t A, int64_t B, int64_t C, int64_t stride_a,
                        int64_t stride_b, uintptr_t weight, uintptr_t bias, double eps, uintptr_t out,
                        int out_dtype) {
  two_dtypes(x_dtype, out_dtype, [&](auto in, auto o) {
    using In = decltype(in);
    using Out = decltype(o);
    layer_norm_last(pointer<const In>(x), A, B, C, stride_a, stride_b, pointer<const float>(weight),
                    pointer<const float>(bias), static_cast<float>(eps), pointer<Out>(out));
  });
}

void protrna_layer_norm_first(uintptr_t x, int x_dtype, int64_t C, int64_t P, int64_t stride_c, uintptr_t weight,
                         uintptr_t bias, double eps, uintptr_t out, int out_dtype) {
  two_dtypes(x_dtype, out_dtype, [&](auto in, auto o) {
    using In = decltype(in);
    using Out = decltype(o);
    layer_norm_first(pointer<const In>(x), C, P, stride_c, pointer<const float>(weight), pointer<const float>(bias),
                     static_cast<float>(eps), pointer<Out>(out));
  });
}

void protrna_softmax_with_bias(uintptr_t logits, int logits_dtype, uintptr_t bias, int bias_dtype,
                          int shared_bias, int64_t N, int64_t L, int64_t S, uintptr_t out, int out_dtype) {
  two_dtypes(logits_dtype, bias_dtype, [&](auto in, auto b) {
    using In = decltype(in);
    using Bias = decltype(b);
    if (out_dtype == 0) {
      softmax_with_bias(pointer<const In>(logits), pointer<const Bias>(bias), shared_bias, N, L, S, pointer<float>(out));
    } else {
      softmax_with_bias(pointer<const In>(logits), pointer<const Bias>(bias), shared_bias, N, L, S,
                        pointer<BFloat16>(out));
    }
  });
}

void protrna_gated_operand(uintptr_t projected, int projected_dtype, uintptr_t mask, int64_t P, int64_t C,
                      uintptr_t out, int out_dtype, int64_t stride_c) {
  two_dtypes(projected_dtype, out_dtype, [&](auto in, auto o) {
    using In = decltype(in);
    using Out = decltype(o);
    gated_operand(pointer<const In>(projected), pointer<const bool>(mask), P, C, pointer<Out>(out), stride_c);
  });
}

void protrna_add_gated(uintptr_t residual, int64_t A, int64_t B, int64_t C, int64_t stride_a, int64_t stride_b,
                  uintptr_t value, int value_dtype, uintptr_t gate, int gate_dtype) {
  two_dtypes(value_dtype, gate_dtype, [&](auto v, auto g) {
    using Value = decltype(v);
    using Gate = decltype(g);
    add_gated(pointer<float>(residual), A, B, C, stride_a, stride_b, pointer<const Value>(value),
              pointer<const Gate>(gate));
  });
}

int protrna_lanes() { return static_cast<int>(kLanes); }

}  // extern "C"
