// train_dialogue: the ISM paper's training claim at the attention level.
//
// A dialogue of T rounds (a user query, then an answer) is trained on with a
// loss on every answer token. A prefix-LM cannot do that in one pass: the
// history of round t must be bidirectional prefix for answer t, yet causal
// history for later answers, so it expands the dialogue into T samples
// (sample t = rounds 1..t-1 and query t as the prefix, answer t causal, loss
// on answer t only). ISM trains every answer of the dialogue in one pass over
// one sequence: queries bidirectional within themselves, answers causal, no
// token sees a later segment.
//
// For T = 1..rounds this program times forward + backward attention (one
// layer, ism::attention then ism::attention_backward) both ways and prints the
// visible (query, key) pairs and times with their ratios. Then it checks the
// property that makes the one pass correct: with a loss on round t's answer
// only, the gradients of the one ISM pass over the whole dialogue equal those
// of an ISM pass over the dialogue cut after round t: no later round leaks
// into them. (A prefix-LM pass over the whole dialogue fails that check: its
// bidirectional history lets later tokens in, which is why it needs T samples.)
//
//   ./build/examples/train_dialogue --help
#include <ism/attention/backward.hpp>
#include <ism/ism.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace {

using ism::index_t;

struct Config {
  index_t rounds = 16;
  index_t query_min = 64, query_max = 256;
  index_t answer_min = 128, answer_max = 512;
  index_t heads = 4, dim = 64;
  int threads = 0;
  unsigned seed = 1;
};

void usage(const char* argv0) {
  const Config d;
  std::printf(
      "usage: %s [options]\n"
      "  --rounds N       dialogue rounds; the table has T = 1..N          [%lld]\n"
      "  --query-min N    shortest user query (tokens)                     [%lld]\n"
      "  --query-max N    longest user query                               [%lld]\n"
      "  --answer-min N   shortest answer                                  [%lld]\n"
      "  --answer-max N   longest answer                                   [%lld]\n"
      "  --heads N        attention heads                                  [%lld]\n"
      "  --dim N          head dimension                                   [%lld]\n"
      "  --threads N      threads (0: all cores)                           [%d]\n"
      "  --seed N         lengths and data seed                            [%u]\n"
      "  --help           this text\n",
      argv0, (long long)d.rounds, (long long)d.query_min, (long long)d.query_max, (long long)d.answer_min,
      (long long)d.answer_max, (long long)d.heads, (long long)d.dim, d.threads, d.seed);
}

bool parse(int argc, char** argv, Config& c) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      usage(argv[0]);
      std::exit(0);
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s: %s needs a value (try --help)\n", argv[0], a.c_str());
      return false;
    }
    char* end = nullptr;
    const long long v = std::strtoll(argv[++i], &end, 10);
    if (*end != '\0') {
      std::fprintf(stderr, "%s: %s: '%s' is not a number\n", argv[0], a.c_str(), argv[i]);
      return false;
    }
    if (a == "--rounds") c.rounds = v;
    else if (a == "--query-min") c.query_min = v;
    else if (a == "--query-max") c.query_max = v;
    else if (a == "--answer-min") c.answer_min = v;
    else if (a == "--answer-max") c.answer_max = v;
    else if (a == "--heads") c.heads = v;
    else if (a == "--dim") c.dim = v;
    else if (a == "--threads") c.threads = int(v);
    else if (a == "--seed") c.seed = unsigned(v);
    else {
      std::fprintf(stderr, "%s: unknown option %s (try --help)\n", argv[0], a.c_str());
      return false;
    }
  }
  const bool ok = c.rounds >= 1 && c.query_min >= 1 && c.query_max >= c.query_min && c.answer_min >= 1 &&
                  c.answer_max >= c.answer_min && c.heads >= 1 && c.dim >= 1 && c.threads >= 0;
  if (!ok)
    std::fprintf(stderr, "%s: need rounds, heads, dim and the minimum lengths >= 1, maxima >= minima, threads >= 0\n",
                 argv[0]);
  return ok;
}

// Q, K, V, dO and the results of one attention layer over the first `tokens`
// tokens of the dialogue ([tokens, heads, dim], packed). Normal entries: scores
// of unit spread, weights neither uniform nor one-hot, like a real layer's.
struct Layer {
  index_t tokens, heads, dim;
  std::vector<float> q, k, v, dout, out, dq, dk, dv, lse;
  Layer(index_t n, index_t h, index_t d, unsigned seed)
      : tokens(n), heads(h), dim(d), q(size_t(n * h * d)), k(q.size()), v(q.size()), dout(q.size()), out(q.size()),
        dq(q.size()), dk(q.size()), dv(q.size()), lse(size_t(n * h)) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal(0.f, 1.f);
    for (auto* x : {&q, &k, &v, &dout})
      for (float& y : *x) y = normal(gen);
  }
  ism::HeadsView<float> view(std::vector<float>& x, index_t n) { return ism::token_major(x.data(), n, heads, dim); }
  ism::HeadsView<const float> cview(std::vector<float>& x, index_t n) { return ism::as_const(view(x, n)); }

  // Forward then backward over the first n tokens under mask; dout rows
  // outside [loss_begin, loss_end) count as 0 (the loss is on those rows).
  template <class Mask>
  void train_step(index_t n, const Mask& mask, int threads, std::vector<float>* dout_override = nullptr) {
    ism::AttentionOptions o;
    o.threads = threads;
    o.q_offset = 0;
    o.lse = lse.data();
    std::vector<float>& g = dout_override ? *dout_override : dout;
    ism::attention<float>(cview(q, n), cview(k, n), cview(v, n), view(out, n), mask, o);
    ism::attention_backward<float>(cview(q, n), cview(k, n), cview(v, n), cview(out, n), cview(g, n), lse.data(),
                                   view(dq, n), view(dk, n), view(dv, n), mask, o);
  }
};

template <class Mask>
index_t visible_pairs(const Mask& mask, index_t n) {
  index_t p = 0;
  for (index_t i = 0; i < n; ++i) p += ism::visible_keys(mask, i, n).size();
  return p;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Largest |a - b| over the first n tokens, relative to max |b|; and whether a
// is exactly 0 from token n on.
struct Compare {
  double rel = 0;
  bool zero_after = true;
};
Compare compare(const std::vector<float>& a, const std::vector<float>& b, index_t n, index_t row, index_t total) {
  Compare c;
  double top = 0, diff = 0;
  for (index_t i = 0; i < n * row; ++i) {
    top = std::max(top, double(std::abs(b[size_t(i)])));
    diff = std::max(diff, double(std::abs(a[size_t(i)] - b[size_t(i)])));
  }
  for (index_t i = n * row; i < total * row; ++i) c.zero_after = c.zero_after && a[size_t(i)] == 0.f;
  c.rel = top > 0 ? diff / top : diff;
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  if (!parse(argc, argv, c)) return 2;
  // The rounds' lengths; sample t of the prefix-LM is the first b[2t] tokens.
  std::mt19937 gen(c.seed);
  std::vector<index_t> b{0};
  for (index_t t = 0; t < c.rounds; ++t) {
    b.push_back(b.back() + std::uniform_int_distribution<index_t>(c.query_min, c.query_max)(gen));
    b.push_back(b.back() + std::uniform_int_distribution<index_t>(c.answer_min, c.answer_max)(gen));
  }
  const index_t total = b.back();
  Layer layer(total, c.heads, c.dim, c.seed + 1);
  std::printf("One attention layer, fp32, %lld heads x dim %lld, %s threads, SIMD path %s.\n", (long long)c.heads,
              (long long)c.dim, c.threads ? std::to_string(c.threads).c_str() : "all", ISM_SIMD_NAME);
  std::printf("Forward + backward for every answer token of a T-round dialogue (queries %lld-%lld, answers %lld-%lld tokens):\n"
              "  ISM:       one pass over the dialogue\n"
              "  prefix-LM: T samples, sample t = rounds 1..t-1 + query t as prefix, answer t causal\n\n",
              (long long)c.query_min, (long long)c.query_max, (long long)c.answer_min, (long long)c.answer_max);
  std::printf("%4s %8s %14s %14s %7s %12s %12s %7s\n", "T", "tokens", "ISM pairs", "prefix pairs", "ratio", "ISM",
              "prefix-LM", "ratio");
  for (index_t rounds = 1; rounds <= c.rounds; ++rounds) {
    const std::vector<index_t> bt(b.begin(), b.begin() + 2 * rounds + 1);
    const index_t n = bt.back();
    const ism::SegmentMask ism_mask = ism::ism_mask(bt);
    layer.train_step(n, ism_mask, c.threads);  // warm-up: the scratch of this size
    auto t0 = std::chrono::steady_clock::now();
    layer.train_step(n, ism_mask, c.threads);
    const double ism_s = seconds_since(t0);
    index_t prefix_pairs = 0;
    t0 = std::chrono::steady_clock::now();
    for (index_t t = 1; t <= rounds; ++t)
      layer.train_step(bt[size_t(2 * t)], ism::prefix_mask(bt[size_t(2 * t - 1)]), c.threads);
    const double prefix_s = seconds_since(t0);
    for (index_t t = 1; t <= rounds; ++t)
      prefix_pairs += visible_pairs(ism::prefix_mask(bt[size_t(2 * t - 1)]), bt[size_t(2 * t)]);
    const index_t ism_pairs = visible_pairs(ism_mask, n);
    std::printf("%4lld %8lld %14lld %14lld %6.2fx %10.1fms %10.1fms %6.2fx\n", (long long)rounds, (long long)n,
                (long long)ism_pairs, (long long)prefix_pairs, double(prefix_pairs) / double(ism_pairs), ism_s * 1e3,
                prefix_s * 1e3, prefix_s / ism_s);
  }

  // No leak: loss on round t's answer only. The whole dialogue under ISM
  // against the dialogue cut after round t (equal up to the rounding of
  // dK/dV sums that the two plans may cut differently; exactly 0 after).
  std::printf("\nLoss on round t's answer only: gradients of one pass over all %lld rounds vs a pass over rounds 1..t\n",
              (long long)c.rounds);
  std::printf("%4s %22s %22s %26s\n", "t", "ISM max rel diff", "ISM zero after cut", "prefix-LM max rel diff");
  const index_t row = c.heads * c.dim;
  bool all_ok = true;
  std::vector<float> dout_t(layer.dout.size());
  for (index_t t = 1; t <= c.rounds; ++t) {
    const index_t cut = b[size_t(2 * t)];
    std::fill(dout_t.begin(), dout_t.end(), 0.f);
    std::copy(layer.dout.begin() + b[size_t(2 * t - 1)] * row, layer.dout.begin() + cut * row,
              dout_t.begin() + b[size_t(2 * t - 1)] * row);
    // ISM: whole dialogue, then the cut one.
    layer.train_step(total, ism::ism_mask(b), c.threads, &dout_t);
    const std::vector<float> dq = layer.dq, dk = layer.dk, dv = layer.dv;
    layer.train_step(cut, ism::ism_mask({b.begin(), b.begin() + 2 * t + 1}), c.threads, &dout_t);
    const Compare q = compare(dq, layer.dq, cut, row, total), k = compare(dk, layer.dk, cut, row, total),
                  v = compare(dv, layer.dv, cut, row, total);
    const double ism_rel = std::max({q.rel, k.rel, v.rel});
    const bool zero = q.zero_after && k.zero_after && v.zero_after;
    // Prefix-LM over the whole dialogue (prefix: everything before the last
    // answer) against its own sample t.
    layer.train_step(total, ism::prefix_mask(b[b.size() - 2]), c.threads, &dout_t);
    const std::vector<float> pq = layer.dq;
    layer.train_step(cut, ism::prefix_mask(b[size_t(2 * t - 1)]), c.threads, &dout_t);
    const double prefix_rel = compare(pq, layer.dq, cut, row, total).rel;
    const bool ok = ism_rel < 1e-5 && zero;
    all_ok = all_ok && ok;
    std::printf("%4lld %22.2e %22s %26.2e\n", (long long)t, ism_rel, zero ? "yes" : "NO", prefix_rel);
  }
  std::printf("\n%s\n", all_ok ? "ISM: no later round reaches an earlier answer's gradients (within fp32 rounding)."
                               : "ISM check FAILED: a later round changed an earlier answer's gradients.");
  return all_ok ? 0 : 1;
}
