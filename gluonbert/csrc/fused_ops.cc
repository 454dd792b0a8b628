// gluonbert's fused CPU operators, loaded into MXNet with mx.library.load (lib_api.h).
//
// MXNet 1.9's CPU kernels for two hot spots of fine-tuning are generic, unvectorised code:
// the LayerNorm backward (a chain of broadcast reductions) and the AdamW update. The
// operators here do the same arithmetic in one cache-friendly, OpenMP-parallel pass:
//
//   gluonbert_layer_norm(data, gamma, beta; eps) -> out      (normalises the last axis)
//   gluonbert_multi_adamw_update(weight[N], grad[N], mean[N], var[N], rescale_grad;
//       num_arrays, etas, wds, beta1, beta2, epsilon) -> weight[N], mean and var in place
//       (the rule of contrib.adamw_update, N arrays in one call)
//   gluonbert_multi_sum_sq(array[N]; num_arrays) -> (1,) sum of squares, for clipping
//   gluonbert_dropout(data, training; p) -> out, seed      (the mask is recomputed)
//   gluonbert_selfatt_qk(qkv; heads), gluonbert_selfatt_valatt(qkv, attention; heads):
//       self-attention's batched products (see below)
//
// float32 on CPU only; gluonbert/ops.py falls back to MXNet's operators otherwise.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;
using mxnet::ext::kFloat32;

using Attrs = std::unordered_map<std::string, std::string>;

namespace {

float attr_float(const Attrs& attrs, const char* name, float fallback) {
  auto it = attrs.find(name);
  return it == attrs.end() ? fallback : std::stof(it->second);
}

int64_t num_elements(const MXTensor& t) {
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  return n;
}

// Every operator here is float32 only: inputs float32 (unknown ones, -1, as graph passes
// ask with, are inferred float32), outputs float32.
MXReturnValue float32_types(const char* op, std::vector<int>* in_types,
                            std::vector<int>* out_types) {
  for (int& t : *in_types) {
    if (t == -1) t = kFloat32;
    if (t != kFloat32) {
      MX_ERROR_MSG << op << " supports float32 only";
      return MX_FAIL;
    }
  }
  for (int& t : *out_types) t = kFloat32;
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------- LayerNorm

// mean and 1/sqrt(var + eps) of one row (two passes: the same numerics as MXNet's kernel)
inline void row_moments(const float* x, int64_t units, float eps, float* mean, float* rstd) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < units; ++j) sum += x[j];
  const float mu = sum / units;
  float sq = 0.f;
#pragma omp simd reduction(+ : sq)
  for (int64_t j = 0; j < units; ++j) sq += (x[j] - mu) * (x[j] - mu);
  *mean = mu;
  *rstd = 1.f / std::sqrt(sq / units + eps);
}

MXReturnValue ln_parse(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 3;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue ln_type(const Attrs& attrs, std::vector<int>* in_types,
                      std::vector<int>* out_types) {
  return float32_types("gluonbert_layer_norm", in_types, out_types);
}

MXReturnValue ln_shape(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                       std::vector<std::vector<unsigned int>>* out_shapes) {
  const auto& data = (*in_shapes)[0];
  if (data.empty() || (*in_shapes)[1].size() != 1 || (*in_shapes)[2].size() != 1 ||
      (*in_shapes)[1][0] != data.back() || (*in_shapes)[2][0] != data.back()) {
    MX_ERROR_MSG << "gluonbert_layer_norm: gamma and beta must have shape (units,), units = data's last axis";
    return MX_FAIL;
  }
  (*out_shapes)[0] = data;
  return MX_SUCCESS;
}

MXReturnValue ln_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                         std::vector<MXTensor>* outputs, const OpResource& res) {
  const float eps = attr_float(attrs, "eps", 1e-5f);
  MXTensor& data = (*inputs)[0];
  const float* x = data.data<float>();
  const float* gamma = (*inputs)[1].data<float>();
  const float* beta = (*inputs)[2].data<float>();
  float* y = (*outputs)[0].data<float>();
  const int64_t units = data.shape.back();
  const int64_t rows = num_elements(data) / units;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * units;
    float* yr = y + r * units;
    float mu, rstd;
    row_moments(xr, units, eps, &mu, &rstd);
#pragma omp simd
    for (int64_t j = 0; j < units; ++j) yr[j] = (xr[j] - mu) * rstd * gamma[j] + beta[j];
  }
  return MX_SUCCESS;
}

// inputs: out_grad, data, gamma, beta, out; outputs: data_grad, gamma_grad, beta_grad
MXReturnValue ln_backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                          std::vector<MXTensor>* outputs, const OpResource& res) {
  const float eps = attr_float(attrs, "eps", 1e-5f);
  const float* dy = (*inputs)[0].data<float>();
  MXTensor& data = (*inputs)[1];
  const float* x = data.data<float>();
  const float* gamma = (*inputs)[2].data<float>();
  float* dx = (*outputs)[0].data<float>();
  float* dgamma = (*outputs)[1].data<float>();
  float* dbeta = (*outputs)[2].data<float>();
  const int64_t units = data.shape.back();
  const int64_t rows = num_elements(data) / units;
  const int threads = omp_get_max_threads();
  // per-thread partial sums of dgamma and dbeta, reduced at the end
  float* partial = static_cast<float*>(res.alloc_cpu(sizeof(float) * 2 * units * threads));
  std::memset(partial, 0, sizeof(float) * 2 * units * threads);
#pragma omp parallel num_threads(threads)
  {
    float* pg = partial + 2 * units * omp_get_thread_num();
    float* pb = pg + units;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * units;
      const float* dyr = dy + r * units;
      float* dxr = dx + r * units;
      float mu, rstd;
      row_moments(xr, units, eps, &mu, &rstd);
      float sum_g = 0.f, sum_gx = 0.f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t j = 0; j < units; ++j) {
        const float xhat = (xr[j] - mu) * rstd;
        const float g = dyr[j] * gamma[j];
        sum_g += g;
        sum_gx += g * xhat;
        pg[j] += dyr[j] * xhat;
        pb[j] += dyr[j];
      }
      const float mean_g = sum_g / units, mean_gx = sum_gx / units;
#pragma omp simd
      for (int64_t j = 0; j < units; ++j) {
        const float xhat = (xr[j] - mu) * rstd;
        dxr[j] = rstd * (dyr[j] * gamma[j] - mean_g - xhat * mean_gx);
      }
    }
  }
  for (int64_t j = 0; j < units; ++j) {
    float g = 0.f, b = 0.f;
    for (int t = 0; t < threads; ++t) {
      g += partial[2 * units * t + j];
      b += partial[2 * units * t + units + j];
    }
    dgamma[j] = g;
    dbeta[j] = b;
  }
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------- AdamW

// "1e-3,2e-3,..." -> floats; false unless exactly `count` of them
bool parse_list(const Attrs& attrs, const char* name, size_t count, std::vector<float>* out) {
  auto it = attrs.find(name);
  if (it == attrs.end()) return false;
  const std::string& text = it->second;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    out->push_back(std::stof(text.substr(start, end - start)));
    start = end + 1;
  }
  return out->size() == count;
}

int num_arrays(const Attrs& attrs) {
  auto it = attrs.find("num_arrays");
  return it == attrs.end() ? 0 : std::stoi(it->second);
}

// inputs: weight[N], grad[N], mean[N], var[N], rescale_grad (1,); outputs: weight[N]
MXReturnValue adamw_parse(const Attrs& attrs, int* num_in, int* num_out) {
  const int n = num_arrays(attrs);
  std::vector<float> etas, wds;
  if (n < 1 || !parse_list(attrs, "etas", n, &etas) || !parse_list(attrs, "wds", n, &wds)) {
    MX_ERROR_MSG << "gluonbert_multi_adamw_update: num_arrays >= 1 and as many etas and wds";
    return MX_FAIL;
  }
  *num_in = 4 * n + 1;
  *num_out = n;
  return MX_SUCCESS;
}

MXReturnValue adamw_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return float32_types("gluonbert_multi_adamw_update", in_types, out_types);
}

MXReturnValue adamw_shape(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  const int n = num_arrays(attrs);
  for (int k = 0; k < n; ++k) {
    const auto& shape = (*in_shapes)[k];
    for (int part = 1; part < 4; ++part)
      if ((*in_shapes)[part * n + k] != shape) {
        MX_ERROR_MSG << "gluonbert_multi_adamw_update: weight, grad, mean and var " << k
                     << " differ in shape";
        return MX_FAIL;
      }
    (*out_shapes)[k] = shape;
  }
  return MX_SUCCESS;
}

MXReturnValue adamw_mutate(const Attrs& attrs, std::vector<int>* input_indices) {
  const int n = num_arrays(attrs);
  for (int i = 2 * n; i < 4 * n; ++i) input_indices->push_back(i);  // means and vars
  return MX_SUCCESS;
}

// The rule of mxnet.ndarray.contrib.adamw_update with lr=1, for every array k:
//   g = rescale_grad * grad; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2
//   w -= eta_k * (m / (sqrt(v) + epsilon) + wd_k * w)
// skipped (weights copied) if rescale_grad is 0, inf or nan; the gradients are not changed.
MXReturnValue adamw_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                            std::vector<MXTensor>* outputs, const OpResource& res) {
  const int n = num_arrays(attrs);
  std::vector<float> etas, wds;
  parse_list(attrs, "etas", n, &etas);
  parse_list(attrs, "wds", n, &wds);
  const float scale = *(*inputs)[4 * n].data<float>();
  const bool skip = !std::isfinite(scale) || scale == 0.f;
  const float beta1 = attr_float(attrs, "beta1", 0.9f), beta2 = attr_float(attrs, "beta2", 0.999f);
  const float epsilon = attr_float(attrs, "epsilon", 1e-6f);
#pragma omp parallel
  for (int k = 0; k < n; ++k) {
    const float* w_in = (*inputs)[k].data<float>();
    const float* grad = (*inputs)[n + k].data<float>();
    float* mean = (*inputs)[2 * n + k].data<float>();
    float* var = (*inputs)[3 * n + k].data<float>();
    float* w = (*outputs)[k].data<float>();
    const int64_t size = num_elements((*inputs)[k]);
    const float eta = etas[k], wd = wds[k];
    if (skip) {
      if (w != w_in) {
#pragma omp for schedule(static) nowait
        for (int64_t i = 0; i < size; ++i) w[i] = w_in[i];
      }
      continue;
    }
    // arrays are independent: no barrier between them
#pragma omp for simd schedule(static) nowait
    for (int64_t i = 0; i < size; ++i) {
      const float g = grad[i] * scale;
      const float m = beta1 * mean[i] + (1.f - beta1) * g;
      const float v = beta2 * var[i] + (1.f - beta2) * g * g;
      mean[i] = m;
      var[i] = v;
      w[i] = w_in[i] - eta * (m / (std::sqrt(v) + epsilon) + wd * w_in[i]);
    }
  }
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------- sum of squares

// inputs: array[N]; output: (1,) float32, the sum of all their squared elements
// (accumulated in double), for the global gradient norm of clipping
MXReturnValue sumsq_parse(const Attrs& attrs, int* num_in, int* num_out) {
  if (num_arrays(attrs) < 1) {
    MX_ERROR_MSG << "gluonbert_multi_sum_sq: num_arrays >= 1";
    return MX_FAIL;
  }
  *num_in = num_arrays(attrs);
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue sumsq_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return float32_types("gluonbert_multi_sum_sq", in_types, out_types);
}

MXReturnValue sumsq_shape(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  (*out_shapes)[0] = {1};
  return MX_SUCCESS;
}

MXReturnValue sumsq_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                            std::vector<MXTensor>* outputs, const OpResource& res) {
  double total = 0.0;
#pragma omp parallel reduction(+ : total)
  {
    // each thread sums its share of every array (few, large arrays: no scheduling needed)
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    for (auto& array : *inputs) {
      const float* x = array.data<float>();
      const int64_t size = num_elements(array);
      const int64_t begin = size * id / threads, end = size * (id + 1) / threads;
      double local = 0.0;
#pragma omp simd reduction(+ : local)
      for (int64_t i = begin; i < end; ++i) local += static_cast<double>(x[i]) * x[i];
      total += local;
    }
  }
  *(*outputs)[0].data<float>() = static_cast<float>(total);
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------- Dropout

// inputs: data, training (1,) float32 (nonzero: drop; zero: pass data through);
// outputs: out (data's shape), seed (1,) int64. A kept element is scaled by 1/(1-p).
//
// The extension API does not say whether a forward is for training, so the graph passes it
// in (gluonbert.layers.Dropout computes it with MXNet's own Dropout of a constant). The
// random bits are a counter-based hash (splitmix64) of one 64-bit seed per call, drawn from
// MXNet's generator (mx.random.seed makes runs repeatable), 16 bits per element: the same
// mask whatever the thread count. The backward recomputes the mask from the seed (an output,
// so that MXNet keeps it for the backward) instead of storing it.
inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// an element is kept when its 16 random bits are >= threshold: P(drop) = threshold / 2^16
inline uint32_t drop_threshold(float p) {
  return static_cast<uint32_t>(std::lround(p * 65536.0));
}

// out[i] = keep(i) ? in[i] * scale : 0, for the mask of `seed` (in-place allowed)
inline void apply_mask(const float* in, float* out, int64_t n, uint64_t seed, uint32_t threshold,
                       float scale) {
  const int64_t groups = (n + 3) / 4;
#pragma omp parallel for simd schedule(static)
  for (int64_t g = 0; g < groups; ++g) {
    const uint64_t bits = splitmix64(seed + static_cast<uint64_t>(g) * 0x9E3779B97F4A7C15ULL);
    for (int k = 0; k < 4; ++k) {
      const int64_t i = 4 * g + k;
      if (i < n) out[i] = ((bits >> (16 * k)) & 0xFFFF) >= threshold ? in[i] * scale : 0.f;
    }
  }
}

MXReturnValue dropout_parse(const Attrs& attrs, int* num_in, int* num_out) {
  const float p = attr_float(attrs, "p", -1.f);
  if (!(p >= 0.f && p < 1.f)) {
    MX_ERROR_MSG << "gluonbert_dropout: p must be in [0, 1)";
    return MX_FAIL;
  }
  *num_in = 2;
  *num_out = 2;
  return MX_SUCCESS;
}

MXReturnValue dropout_type(const Attrs& attrs, std::vector<int>* in_types,
                           std::vector<int>* out_types) {
  std::vector<int> float_output(1);
  if (float32_types("gluonbert_dropout", in_types, &float_output) != MX_SUCCESS)
    return MX_FAIL;
  (*out_types)[0] = kFloat32;
  (*out_types)[1] = mxnet::ext::kInt64;
  return MX_SUCCESS;
}

MXReturnValue dropout_shape(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                            std::vector<std::vector<unsigned int>>* out_shapes) {
  if ((*in_shapes)[1] != std::vector<unsigned int>{1}) {
    MX_ERROR_MSG << "gluonbert_dropout: training must have shape (1,)";
    return MX_FAIL;
  }
  (*out_shapes)[0] = (*in_shapes)[0];
  (*out_shapes)[1] = {1};
  return MX_SUCCESS;
}

MXReturnValue dropout_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                              std::vector<MXTensor>* outputs, const OpResource& res) {
  const float p = attr_float(attrs, "p", 0.f);
  const float* x = (*inputs)[0].data<float>();
  const bool training = *(*inputs)[1].data<float>() != 0.f;
  float* y = (*outputs)[0].data<float>();
  int64_t* seed_out = (*outputs)[1].data<int64_t>();
  const int64_t n = num_elements((*inputs)[0]);
  *seed_out = 0;
  if (!training || p == 0.f) {
    if (y != x) std::memcpy(y, x, sizeof(float) * n);
    return MX_SUCCESS;
  }
  mxnet::ext::mx_cpu_rand_t* states = res.get_cpu_rand_states();
  if (states == nullptr) {
    MX_ERROR_MSG << "gluonbert_dropout: MXNet gave no random generator";
    return MX_FAIL;
  }
  const uint64_t seed = (static_cast<uint64_t>(states[0]()) << 32) ^ states[0]();
  *seed_out = static_cast<int64_t>(seed);
  apply_mask(x, y, n, seed, drop_threshold(p), 1.f / (1.f - p));
  return MX_SUCCESS;
}

// inputs: out_grad, seed_grad, data, training, out, seed; outputs: data_grad, training_grad
MXReturnValue dropout_backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                               std::vector<MXTensor>* outputs, const OpResource& res) {
  const float p = attr_float(attrs, "p", 0.f);
  const float* dy = (*inputs)[0].data<float>();
  const bool training = *(*inputs)[3].data<float>() != 0.f;
  const uint64_t seed = static_cast<uint64_t>(*(*inputs)[5].data<int64_t>());
  float* dx = (*outputs)[0].data<float>();
  *(*outputs)[1].data<float>() = 0.f;
  const int64_t n = num_elements((*inputs)[2]);
  if (!training || p == 0.f) {
    if (dx != dy) std::memcpy(dx, dy, sizeof(float) * n);
    return MX_SUCCESS;
  }
  apply_mask(dy, dx, n, seed, drop_threshold(p), 1.f / (1.f - p));
  return MX_SUCCESS;
}

// ---------------------------------------------------------------- self-attention
//
// The batched products of self-attention on MXNet's interleaved layout: qkv is
// (L, B, H*3*D), each head's [q, k, v] side by side. MXNet 1.9 computes them (and their
// gradients) with an OpenBLAS call per head, about 40 GFLOP/s on 2 cores where its dense
// layers reach 300. Here: one OpenMP task per (batch, head), its operands packed into
// contiguous buffers, and a register-tiled kernel.
//
//   gluonbert_selfatt_qk(qkv; heads) -> (B*H, L, L) = q k^T / sqrt(D)
//   gluonbert_selfatt_valatt(qkv, attention; heads) -> (L, B, H*D) = attention v
//
// (the semantics of _contrib_interleaved_matmul_selfatt_qk / _valatt)

#if defined(__AVX512F__)
constexpr int kTileRows = 6, kTileCols = 32;
#else
constexpr int kTileRows = 6, kTileCols = 16;
#endif

// C (M x N, row stride ldc) = alpha * A (M x K, contiguous) * B (K x N, contiguous)
void small_gemm(int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C,
                int64_t ldc, float alpha) {
  for (int64_t i = 0; i < M; i += kTileRows) {
    const int64_t rows = std::min<int64_t>(kTileRows, M - i);
    for (int64_t j = 0; j < N; j += kTileCols) {
      const int64_t cols = std::min<int64_t>(kTileCols, N - j);
      float acc[kTileRows][kTileCols] = {};
      if (rows == kTileRows && cols == kTileCols) {
        for (int64_t k = 0; k < K; ++k) {
          const float* b = B + k * N + j;
          for (int r = 0; r < kTileRows; ++r) {
            const float a = A[(i + r) * K + k];
#pragma omp simd
            for (int c = 0; c < kTileCols; ++c) acc[r][c] += a * b[c];
          }
        }
      } else {
        for (int64_t k = 0; k < K; ++k) {
          const float* b = B + k * N + j;
          for (int64_t r = 0; r < rows; ++r) {
            const float a = A[(i + r) * K + k];
            for (int64_t c = 0; c < cols; ++c) acc[r][c] += a * b[c];
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) C[(i + r) * ldc + j + c] = alpha * acc[r][c];
    }
  }
}

// a (rows x cols) matrix of row stride `stride` into `out`, contiguous, transposed or not
void pack(const float* in, int64_t stride, int64_t rows, int64_t cols, bool transpose,
          float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = in + r * stride;
    if (transpose) {
      for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = row[c];
    } else {
      std::memcpy(out + r * cols, row, sizeof(float) * cols);
    }
  }
}

void zero_rows(float* out, int64_t stride, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) std::memset(out + r * stride, 0, sizeof(float) * cols);
}

// The geometry of an interleaved qkv tensor (L, B, H*3*D) with `heads` heads.
struct Interleaved {
  int64_t L, B, H, D;
  int64_t stride() const { return B * H * 3 * D; }           // from one position to the next
  int64_t offset(int64_t g, int slot) const {                 // slot 0 q, 1 k, 2 v of head g
    return (g / H) * H * 3 * D + (g % H) * 3 * D + slot * D;
  }
};

bool interleaved(const std::vector<unsigned int>& shape, int64_t heads, Interleaved* geo) {
  if (shape.size() != 3 || heads < 1 || shape[2] % (3 * heads) != 0) return false;
  *geo = {shape[0], shape[1], heads, static_cast<int64_t>(shape[2]) / (3 * heads)};
  return true;
}

int64_t attr_heads(const Attrs& attrs) {
  auto it = attrs.find("heads");
  return it == attrs.end() ? 0 : std::stoll(it->second);
}

MXReturnValue qk_parse(const Attrs& attrs, int* num_in, int* num_out) {
  if (attr_heads(attrs) < 1) {
    MX_ERROR_MSG << "gluonbert_selfatt_qk: heads must be a positive integer";
    return MX_FAIL;
  }
  *num_in = 1;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue valatt_parse(const Attrs& attrs, int* num_in, int* num_out) {
  if (attr_heads(attrs) < 1) {
    MX_ERROR_MSG << "gluonbert_selfatt_valatt: heads must be a positive integer";
    return MX_FAIL;
  }
  *num_in = 2;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue qk_type(const Attrs& attrs, std::vector<int>* in_types,
                      std::vector<int>* out_types) {
  return float32_types("gluonbert_selfatt_qk", in_types, out_types);
}

MXReturnValue valatt_type(const Attrs& attrs, std::vector<int>* in_types,
                          std::vector<int>* out_types) {
  return float32_types("gluonbert_selfatt_valatt", in_types, out_types);
}

MXReturnValue qk_shape(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                       std::vector<std::vector<unsigned int>>* out_shapes) {
  Interleaved geo;
  if (!interleaved((*in_shapes)[0], attr_heads(attrs), &geo)) {
    MX_ERROR_MSG << "gluonbert_selfatt_qk: qkv must be (L, B, heads*3*D)";
    return MX_FAIL;
  }
  const auto bh = static_cast<unsigned int>(geo.B * geo.H);
  const auto len = static_cast<unsigned int>(geo.L);
  (*out_shapes)[0] = {bh, len, len};
  return MX_SUCCESS;
}

MXReturnValue valatt_shape(const Attrs& attrs,
                           std::vector<std::vector<unsigned int>>* in_shapes,
                           std::vector<std::vector<unsigned int>>* out_shapes) {
  Interleaved geo;
  const auto& att = (*in_shapes)[1];
  if (!interleaved((*in_shapes)[0], attr_heads(attrs), &geo) || att.size() != 3 ||
      att[0] != geo.B * geo.H || att[1] != geo.L || att[2] != geo.L) {
    MX_ERROR_MSG << "gluonbert_selfatt_valatt: qkv must be (L, B, heads*3*D) and the "
                    "attention (B*heads, L, L)";
    return MX_FAIL;
  }
  (*out_shapes)[0] = {(*in_shapes)[0][0], (*in_shapes)[0][1],
                      static_cast<unsigned int>(geo.H * geo.D)};
  return MX_SUCCESS;
}

Interleaved geometry_of(const MXTensor& qkv, const Attrs& attrs) {
  const int64_t heads = attr_heads(attrs);
  return {qkv.shape[0], qkv.shape[1], heads, qkv.shape[2] / (3 * heads)};
}

MXReturnValue qk_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                         std::vector<MXTensor>* outputs, const OpResource& res) {
  const Interleaved geo = geometry_of((*inputs)[0], attrs);
  const float* qkv = (*inputs)[0].data<float>();
  float* scores = (*outputs)[0].data<float>();
  const int64_t L = geo.L, D = geo.D;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
#pragma omp parallel
  {
    std::vector<float> q(L * D), kt(D * L);
#pragma omp for schedule(static)
    for (int64_t g = 0; g < geo.B * geo.H; ++g) {
      pack(qkv + geo.offset(g, 0), geo.stride(), L, D, false, q.data());
      pack(qkv + geo.offset(g, 1), geo.stride(), L, D, true, kt.data());
      small_gemm(L, L, D, q.data(), kt.data(), scores + g * L * L, L, scale);
    }
  }
  return MX_SUCCESS;
}

// inputs: out_grad, qkv, out; outputs: qkv_grad (q and k slots; v's is zero)
MXReturnValue qk_backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                          std::vector<MXTensor>* outputs, const OpResource& res) {
  const Interleaved geo = geometry_of((*inputs)[1], attrs);
  const float* dscores = (*inputs)[0].data<float>();
  const float* qkv = (*inputs)[1].data<float>();
  float* dqkv = (*outputs)[0].data<float>();
  const int64_t L = geo.L, D = geo.D;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
#pragma omp parallel
  {
    std::vector<float> operand(L * D), dst(L * L);
#pragma omp for schedule(static)
    for (int64_t g = 0; g < geo.B * geo.H; ++g) {
      const float* ds = dscores + g * L * L;
      pack(qkv + geo.offset(g, 1), geo.stride(), L, D, false, operand.data());   // k
      small_gemm(L, D, L, ds, operand.data(), dqkv + geo.offset(g, 0), geo.stride(), scale);
      pack(ds, L, L, L, true, dst.data());                                        // ds^T
      pack(qkv + geo.offset(g, 0), geo.stride(), L, D, false, operand.data());   // q
      small_gemm(L, D, L, dst.data(), operand.data(), dqkv + geo.offset(g, 1), geo.stride(),
                 scale);
      zero_rows(dqkv + geo.offset(g, 2), geo.stride(), L, D);
    }
  }
  return MX_SUCCESS;
}

MXReturnValue valatt_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                             std::vector<MXTensor>* outputs, const OpResource& res) {
  const Interleaved geo = geometry_of((*inputs)[0], attrs);
  const float* qkv = (*inputs)[0].data<float>();
  const float* att = (*inputs)[1].data<float>();
  float* out = (*outputs)[0].data<float>();
  const int64_t L = geo.L, D = geo.D, out_stride = geo.B * geo.H * D;
#pragma omp parallel
  {
    std::vector<float> v(L * D);
#pragma omp for schedule(static)
    for (int64_t g = 0; g < geo.B * geo.H; ++g) {
      pack(qkv + geo.offset(g, 2), geo.stride(), L, D, false, v.data());
      small_gemm(L, D, L, att + g * L * L, v.data(), out + g * D, out_stride, 1.f);
    }
  }
  return MX_SUCCESS;
}

// inputs: out_grad, qkv, attention, out; outputs: qkv_grad (v slot; q's and k's are zero),
// attention_grad
MXReturnValue valatt_backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                              std::vector<MXTensor>* outputs, const OpResource& res) {
  const Interleaved geo = geometry_of((*inputs)[1], attrs);
  const float* dout = (*inputs)[0].data<float>();
  const float* qkv = (*inputs)[1].data<float>();
  const float* att = (*inputs)[2].data<float>();
  float* dqkv = (*outputs)[0].data<float>();
  float* datt = (*outputs)[1].data<float>();
  const int64_t L = geo.L, D = geo.D, out_stride = geo.B * geo.H * D;
#pragma omp parallel
  {
    std::vector<float> dout_g(L * D), vt(D * L), att_t(L * L);
#pragma omp for schedule(static)
    for (int64_t g = 0; g < geo.B * geo.H; ++g) {
      pack(dout + g * D, out_stride, L, D, false, dout_g.data());
      pack(qkv + geo.offset(g, 2), geo.stride(), L, D, true, vt.data());
      small_gemm(L, L, D, dout_g.data(), vt.data(), datt + g * L * L, L, 1.f);
      pack(att + g * L * L, L, L, L, true, att_t.data());
      small_gemm(L, D, L, att_t.data(), dout_g.data(), dqkv + geo.offset(g, 2), geo.stride(),
                 1.f);
      zero_rows(dqkv + geo.offset(g, 0), geo.stride(), L, 2 * D);
    }
  }
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(gluonbert_layer_norm)
    .setParseAttrs(ln_parse)
    .setInferType(ln_type)
    .setInferShape(ln_shape)
    .setForward(ln_forward, "cpu")
    .setBackward(ln_backward, "cpu");

REGISTER_OP(gluonbert_multi_adamw_update)
    .setParseAttrs(adamw_parse)
    .setInferType(adamw_type)
    .setInferShape(adamw_shape)
    .setMutateInputs(adamw_mutate)
    .setForward(adamw_forward, "cpu");

REGISTER_OP(gluonbert_multi_sum_sq)
    .setParseAttrs(sumsq_parse)
    .setInferType(sumsq_type)
    .setInferShape(sumsq_shape)
    .setForward(sumsq_forward, "cpu");

REGISTER_OP(gluonbert_dropout)
    .setParseAttrs(dropout_parse)
    .setInferType(dropout_type)
    .setInferShape(dropout_shape)
    .setForward(dropout_forward, "cpu")
    .setBackward(dropout_backward, "cpu");

REGISTER_OP(gluonbert_selfatt_qk)
    .setParseAttrs(qk_parse)
    .setInferType(qk_type)
    .setInferShape(qk_shape)
    .setForward(qk_forward, "cpu")
    .setBackward(qk_backward, "cpu");

REGISTER_OP(gluonbert_selfatt_valatt)
    .setParseAttrs(valatt_parse)
    .setInferType(valatt_type)
    .setInferShape(valatt_shape)
    .setForward(valatt_forward, "cpu")
    .setBackward(valatt_backward, "cpu");

MXReturnValue initialize(int version) {
  return version >= 10900 ? MX_SUCCESS : MX_FAIL;
}
