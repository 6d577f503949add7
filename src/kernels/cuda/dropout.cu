// Dropout masks drawn on the GPU: value e of a mask is kept (times `scale`) when word `pos(e)` of the
// ChaCha8 keystream (64-bit block counter, 64-bit stream) is at least `threshold`. The same words as
// the CPU's generator: `chacha8_word` and `MaskPlan::word_pos` in src/model/dropout.rs are this code
// line for line, and the tests hold them to the generator.

#define ROTL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))
#define QR(a, b, c, d)                                                                               \
  a += b; d ^= a; d = ROTL(d, 16);                                                                   \
  c += d; b ^= c; b = ROTL(b, 12);                                                                   \
  a += b; d ^= a; d = ROTL(d, 8);                                                                    \
  c += d; b ^= c; b = ROTL(b, 7);

#define MAX_SEQ 65536ull

__device__ unsigned int chacha8_word(const unsigned int key[8], unsigned long long stream, unsigned long long pos) {
  unsigned long long block = pos >> 4;
  unsigned int in[16] = {0x61707865u, 0x3320646eu, 0x79622d32u, 0x6b206574u,
                         key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
                         (unsigned int)block, (unsigned int)(block >> 32),
                         (unsigned int)stream, (unsigned int)(stream >> 32)};
  unsigned int x[16];
  for (int i = 0; i < 16; i++) x[i] = in[i];
  for (int r = 0; r < 4; r++) {
    QR(x[0], x[4], x[8], x[12]);
    QR(x[1], x[5], x[9], x[13]);
    QR(x[2], x[6], x[10], x[14]);
    QR(x[3], x[7], x[11], x[15]);
    QR(x[0], x[5], x[10], x[15]);
    QR(x[1], x[6], x[11], x[12]);
    QR(x[2], x[7], x[8], x[13]);
    QR(x[3], x[4], x[9], x[14]);
  }
  int i = (int)(pos & 15);
  return x[i] + in[i];
}

// `scores`: the row is [heads, len, len] attention probabilities, whose words sit at
// (h * MAX_SEQ + i) * MAX_SEQ + j; otherwise the row's values take consecutive words.
extern "C" __global__ void accel_dropout_mask(float *out, size_t n, size_t row_values,
                                              unsigned int k0, unsigned int k1, unsigned int k2, unsigned int k3,
                                              unsigned int k4, unsigned int k5, unsigned int k6, unsigned int k7,
                                              unsigned long long stream, unsigned long long first_row,
                                              unsigned long long row_words, unsigned int scores, size_t len,
                                              unsigned long long threshold, float scale) {
  size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= n) return;
  unsigned long long row = e / row_values, v = e % row_values;
  unsigned long long pos = (first_row + row) * row_words;
  if (scores) {
    unsigned long long hi = v / len, j = v % len;
    unsigned long long h = hi / len, i = hi % len;
    pos += (h * MAX_SEQ + i) * MAX_SEQ + j;
  } else {
    pos += v;
  }
  const unsigned int key[8] = {k0, k1, k2, k3, k4, k5, k6, k7};
  out[e] = (unsigned long long)chacha8_word(key, stream, pos) >= threshold ? scale : 0.0f;
}
