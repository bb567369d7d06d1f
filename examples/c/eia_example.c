/*
 * eia from C: attach an eia2.medium accelerator (local, or on a server given as the first
 * argument), run a GEMM, a conv and a softmax in FP32 on random inputs, check each against a
 * double-precision reference, print the usage, and free everything.
 *
 *   cargo build --release --lib
 *   cc -std=c11 -Wall -Wextra -Werror -Iinclude examples/c/eia_example.c \
 *      -Ltarget/release -leia -lm -o target/eia_example
 *   LD_LIBRARY_PATH=target/release target/eia_example               # local accelerator
 *   LD_LIBRARY_PATH=target/release target/eia_example http://127.0.0.1:8470   # `eia serve`
 *
 * Exits 0 when every result is within the FP32 bound (1e-5 relative), 1 otherwise.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "eia.h"

/* Prints the error and exits: every eia call returns NULL on success. */
static void check(eia_error *e, const char *what) {
  if (e != NULL) {
    fprintf(stderr, "%s failed: [%u] %s\n", what, eia_error_code(e), eia_error_message(e));
    eia_error_free(e);
    exit(1);
  }
}

static uint64_t seed = 0x9E3779B97F4A7C15ull;

/* Uniform in [-1, 1): a fresh random input, never all zeros. */
static float uniform(void) {
  seed = seed * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((seed >> 40) / (double)(1 << 24)) * 2.0f - 1.0f;
}

static float *random_floats(size_t n) {
  float *v = malloc(n * sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = uniform();
  return v;
}

static eia_tensor *upload(const eia_accelerator *acc, const size_t *shape, size_t rank,
                          const float *data) {
  size_t n = 1;
  for (size_t i = 0; i < rank; i++) n *= shape[i];
  eia_tensor *t = NULL;
  check(eia_tensor_new(acc, EIA_F32, shape, rank, data, n * sizeof(float), &t), "eia_tensor_new");
  return t;
}

/* Reads `t` back (n floats) and compares with `ref`, each within 1e-5 of its `scale`. */
static int compare(const char *name, const eia_tensor *t, const double *ref, const double *scale,
                   size_t n) {
  float *y = malloc(n * sizeof *y);
  check(eia_tensor_read(t, y, n * sizeof(float)), "eia_tensor_read");
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    double err = fabs(y[i] - ref[i]) / (scale[i] > 0 ? scale[i] : 1);
    if (!(err <= worst)) worst = err; /* NaN counts as a failure */
  }
  free(y);
  int ok = worst <= 1e-5;
  printf("%-8s %6zu outputs  max relative error %.2e  %s\n", name, n, worst, ok ? "ok" : "FAIL");
  return ok;
}

int main(int argc, char **argv) {
  printf("eia %s\n", eia_version());
  eia_device *device = NULL;
  eia_connection *connection = NULL;
  eia_accelerator *acc = NULL;
  if (argc > 1) {
    check(eia_connection_new(argv[1], getenv("EIA_TOKEN"), NULL, &connection), "eia_connection_new");
    check(eia_connection_attach(connection, "eia2.medium", &acc), "eia_connection_attach");
    printf("attached eia2.medium on %s\n", argv[1]);
  } else {
    /* This CPU is slower than the tier: overcommit admits it (rates then not guaranteed). */
    check(eia_device_new(NULL, true, &device), "eia_device_new");
    check(eia_device_attach(device, "eia2.medium", &acc), "eia_device_attach");
    printf("attached eia2.medium on this host\n");
  }
  int ok = 1;

  /* GEMM: Y[M,N] = 0.5 * A[M,K] * B[N,K]^T + C[N]  (transB, C broadcast along rows). */
  enum { M = 13, N = 17, K = 67 };
  float *a = random_floats(M * K), *b = random_floats(N * K), *c = random_floats(N);
  size_t sa[] = {M, K}, sb[] = {N, K}, sc[] = {N};
  eia_tensor *ta = upload(acc, sa, 2, a), *tb = upload(acc, sb, 2, b), *tc = upload(acc, sc, 1, c);
  eia_gemm_attrs gemm = eia_gemm_attrs_default();
  gemm.alpha = 0.5f;
  gemm.trans_b = true;
  eia_tensor *ty = NULL;
  check(eia_gemm(acc, &gemm, ta, tb, tc, &ty), "eia_gemm");
  double ref[M * N], scale[M * N];
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      double s = 0, m = 0;
      for (int k = 0; k < K; k++) {
        s += (double)a[i * K + k] * b[j * K + k];
        m += fabs((double)a[i * K + k] * b[j * K + k]);
      }
      ref[i * N + j] = 0.5 * s + c[j];
      scale[i * N + j] = 0.5 * m + fabs(c[j]);
    }
  ok &= compare("gemm", ty, ref, scale, M * N);
  eia_tensor_free(ty);

  /* Conv: X[1,4,11,9] * W[6,2,3,3], group 2, stride 2, pads {1,1,1,1}, bias, fused ReLU. */
  enum { CN = 1, CC = 4, H = 11, W = 9, CK = 6, G = 2, R = 3, S = 3, ST = 2, PAD = 1 };
  enum { P = (H + 2 * PAD - R) / ST + 1, Q = (W + 2 * PAD - S) / ST + 1 };
  float *x = random_floats(CN * CC * H * W), *w = random_floats(CK * (CC / G) * R * S);
  float *bias = random_floats(CK);
  size_t sx[] = {CN, CC, H, W}, sw[] = {CK, CC / G, R, S}, sbias[] = {CK};
  eia_tensor *tx = upload(acc, sx, 4, x), *tw = upload(acc, sw, 4, w);
  eia_tensor *tbias = upload(acc, sbias, 1, bias);
  eia_conv_attrs conv = eia_conv_attrs_default();
  conv.strides[0] = conv.strides[1] = ST;
  for (int i = 0; i < 4; i++) conv.pads[i] = PAD;
  conv.group = G;
  conv.relu = true;
  check(eia_conv(acc, &conv, tx, tw, tbias, &ty), "eia_conv");
  double cref[CN * CK * P * Q], cscale[CN * CK * P * Q];
  for (int k = 0; k < CK; k++)
    for (int p = 0; p < P; p++)
      for (int q = 0; q < Q; q++) {
        int g = k / (CK / G);
        double s = bias[k], m = fabs(bias[k]);
        for (int ci = 0; ci < CC / G; ci++)
          for (int r = 0; r < R; r++)
            for (int t = 0; t < S; t++) {
              int h = p * ST + r - PAD, v = q * ST + t - PAD;
              if (h < 0 || h >= H || v < 0 || v >= W) continue;
              double term = (double)x[((g * (CC / G) + ci) * H + h) * W + v] *
                            w[((k * (CC / G) + ci) * R + r) * S + t];
              s += term;
              m += fabs(term);
            }
        cref[(k * P + p) * Q + q] = s > 0 ? s : 0;
        cscale[(k * P + p) * Q + q] = m;
      }
  ok &= compare("conv", ty, cref, cscale, CN * CK * P * Q);

  /* Softmax over the last axis of the conv's output, viewed as rows of Q. */
  eia_tensor *tsoft = NULL;
  eia_softmax_attrs softmax = eia_softmax_attrs_default();
  check(eia_softmax(acc, &softmax, ty, &tsoft), "eia_softmax");
  double sref[CN * CK * P * Q], sscale[CN * CK * P * Q];
  for (int row = 0; row < CN * CK * P; row++) {
    const double *in = &cref[row * Q];
    double mx = in[0], sum = 0;
    for (int q = 1; q < Q; q++) mx = in[q] > mx ? in[q] : mx;
    for (int q = 0; q < Q; q++) sum += exp(in[q] - mx);
    for (int q = 0; q < Q; q++) {
      sref[row * Q + q] = exp(in[q] - mx) / sum;
      sscale[row * Q + q] = sref[row * Q + q];
    }
  }
  ok &= compare("softmax", tsoft, sref, sscale, CN * CK * P * Q);

  eia_usage usage;
  check(eia_accelerator_usage(acc, &usage), "eia_accelerator_usage");
  printf("usage: %llu ops, %llu FP32 FLOPs, %.3g accelerator-seconds charged, %llu bytes held\n",
         (unsigned long long)usage.ops, (unsigned long long)usage.flops_f32,
         usage.charged_seconds, (unsigned long long)usage.memory_used);
  char *summary = NULL;
  check(eia_accelerator_summary(acc, &summary), "eia_accelerator_summary");
  printf("%s\n", summary);
  eia_string_free(summary);

  /* A bad call is an error object, never a crash: a 2-D softmax axis of 7. */
  softmax.axis = 7;
  eia_tensor *unused = NULL;
  eia_error *e = eia_softmax(acc, &softmax, ta, &unused);
  printf("expected error: [%u] %s\n", eia_error_code(e), eia_error_message(e));
  ok &= eia_error_code(e) == EIA_ERR_ATTRIBUTE && unused == NULL;
  eia_error_free(e);

  eia_tensor *all[] = {ta, tb, tc, tx, tw, tbias, ty, tsoft};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) eia_tensor_free(all[i]);
  check(eia_accelerator_detach(acc, &usage), "eia_accelerator_detach");
  printf("detached after %.3f s\n", usage.attached_seconds);
  eia_accelerator_free(acc);
  eia_connection_free(connection);
  eia_device_free(device);
  free(a), free(b), free(c), free(x), free(w), free(bias);
  printf(ok ? "all results within bounds\n" : "FAILED\n");
  return ok ? 0 : 1;
}
