// chat_session: a multi-round conversation at the attention level, run three
// ways over the same script and the same random Q/K/V:
//
//   ISM        queries bidirectional, answers causal; the KV cache is kept
//              across rounds, so each round computes only its new tokens;
//   prefix-LM  the whole history up to the current answer is one
//              bidirectional prefix; every new query widens it, so the cached
//              history is stale and is recomputed;
//   causal     the usual decoder mask (reuses its cache, but queries are
//              not bidirectional).
//
// One attention layer, K/V in a paged cache, the answer decoded one token at a
// time. Per round it prints the tokens taken from the cache, the rows computed
// and the attention time, then replays the rows of earlier rounds against the
// grown cache to show that ISM left them bit-identical while prefix-LM changed
// them.
//
//   ./build/examples/chat_session --help
#include <ism/ism.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

using ism::index_t;

struct Config {
  index_t rounds = 8;
  index_t system_len = 128;
  index_t query_len = 128;
  index_t answer_len = 32;
  index_t heads = 8;
  index_t kv_heads = 2;
  index_t dim = 64;
  index_t page_size = 16;
  int threads = 0;
  unsigned seed = 1;
};

void usage(const char* argv0) {
  const Config d;
  std::printf(
      "usage: %s [options]\n"
      "  --rounds N       conversation rounds (user query + answer)   [%lld]\n"
      "  --system-len N   system prompt tokens (0: none)              [%lld]\n"
      "  --query-len N    tokens per user query                       [%lld]\n"
      "  --answer-len N   answer tokens, decoded one at a time        [%lld]\n"
      "  --heads N        query heads                                 [%lld]\n"
      "  --kv-heads N     KV heads (divides --heads; GQA)             [%lld]\n"
      "  --dim N          head dimension                              [%lld]\n"
      "  --page-size N    tokens per KV-cache page                    [%lld]\n"
      "  --threads N      attention threads (0: all cores)            [%d]\n"
      "  --seed N         random data seed                            [%u]\n"
      "  --help           this text\n",
      argv0, (long long)d.rounds, (long long)d.system_len, (long long)d.query_len, (long long)d.answer_len,
      (long long)d.heads, (long long)d.kv_heads, (long long)d.dim, (long long)d.page_size, d.threads, d.seed);
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
    else if (a == "--system-len") c.system_len = v;
    else if (a == "--query-len") c.query_len = v;
    else if (a == "--answer-len") c.answer_len = v;
    else if (a == "--heads") c.heads = v;
    else if (a == "--kv-heads") c.kv_heads = v;
    else if (a == "--dim") c.dim = v;
    else if (a == "--page-size") c.page_size = v;
    else if (a == "--threads") c.threads = int(v);
    else if (a == "--seed") c.seed = unsigned(v);
    else {
      std::fprintf(stderr, "%s: unknown option %s (try --help)\n", argv[0], a.c_str());
      return false;
    }
  }
  const bool ok = c.rounds >= 1 && c.system_len >= 0 && c.query_len >= 1 && c.answer_len >= 0 && c.heads >= 1 &&
                  c.kv_heads >= 1 && c.heads % c.kv_heads == 0 && c.dim >= 1 && c.page_size >= 1 && c.threads >= 0;
  if (!ok)
    std::fprintf(stderr, "%s: need rounds, query-len, heads, kv-heads, dim, page-size >= 1, "
                         "answer-len, system-len, threads >= 0, and kv-heads dividing heads\n", argv[0]);
  return ok;
}

// Q, K and V of every token of the conversation, [tokens, heads, dim] rows.
// Normal entries give scores q.k / sqrt(dim) of unit spread: attention weights
// that are neither uniform nor one-hot, like a real layer's.
struct Buffer {
  std::vector<float> data;
  index_t cols = 0;  // heads * dim
  Buffer(index_t tokens, index_t cols_) : data(size_t(tokens * cols_), 0.f), cols(cols_) {}
  float* row(index_t t) { return data.data() + t * cols; }
  const float* row(index_t t) const { return data.data() + t * cols; }
};

struct Projections {
  Buffer q, k, v;
  Projections(const Config& c, index_t tokens)
      : q(tokens, c.heads * c.dim), k(tokens, c.kv_heads * c.dim), v(tokens, c.kv_heads * c.dim) {
    std::mt19937 gen(c.seed);
    std::normal_distribution<float> normal(0.f, 1.f);
    for (Buffer* b : {&q, &k, &v})
      for (float& x : b->data) x = normal(gen);
  }
};

// The rows one attention call computed: replayed later to check them.
struct Window {
  index_t q_offset, n_q;
};

// One engine: a dialogue of its mask kind, its paged cache, its outputs.
class Engine {
 public:
  Engine(ism::DialogueMask kind, const Config& c, const Projections& p, index_t total)
      : kind_(kind), c_(c), p_(p), dialogue_(kind),
        cache_((total + c.page_size - 1) / c.page_size, c.page_size, c.kv_heads, c.dim),
        out_(total, c.heads * c.dim), before_(total, c.heads * c.dim) {
    seq_ = cache_.add_sequence();
    opt_.threads = c.threads;
  }

  ism::Dialogue& dialogue() { return dialogue_; }
  const char* name() const { return ism::to_string(kind_); }

  // Brings the cache and outputs up to date with the script; returns the
  // tokens taken from the cache.
  index_t step() {
    const ism::DialogueStep s = dialogue_.pending();
    cache_.truncate(seq_, s.reused);  // what is no longer valid goes
    cache_.append(seq_, kv_rows(p_.k, s.q_offset, s.n_q), kv_rows(p_.v, s.q_offset, s.n_q));
    const auto t0 = std::chrono::steady_clock::now();
    ism::attention<float>(q_rows(s.q_offset, s.n_q), cache_.view(seq_), out_rows(out_, s.q_offset, s.n_q),
                          dialogue_.mask(), s.options(opt_));
    seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    rows_ += s.n_q;
    dialogue_.commit();
    // Rows recomputed by this step supersede the windows that computed them.
    while (!windows_.empty() && windows_.back().q_offset + windows_.back().n_q > s.reused) {
      if (windows_.back().q_offset >= s.reused) windows_.pop_back();
      else windows_.back().n_q = s.reused - windows_.back().q_offset;
    }
    windows_.push_back({s.q_offset, s.n_q});
    return s.reused;
  }

  // Call before a new round: remembers the outputs of all rows so far.
  void begin_round() {
    before_ = out_;
    before_windows_ = windows_;
  }

  // Replays every window of earlier rounds against the cache as it is now (the
  // whole conversation so far) under today's mask, and compares with what those
  // rows held before this round. Returns {rows differing, max |diff|}.
  std::pair<index_t, double> replay_earlier_rounds() {
    Buffer again = out_;
    index_t differing = 0;
    double max_diff = 0;
    for (const Window& win : before_windows_) {
      ism::AttentionOptions o = opt_;
      o.q_offset = win.q_offset;
      // Every later token is in the cache now; only the mask decides whether
      // an earlier row may see it.
      ism::attention<float>(q_rows(win.q_offset, win.n_q), cache_.view(seq_), out_rows(again, win.q_offset, win.n_q),
                            dialogue_.mask(), o);
      for (index_t t = win.q_offset; t < win.q_offset + win.n_q; ++t) {
        for (index_t i = 0; i < out_.cols; ++i)
          max_diff = std::max(max_diff, double(std::abs(again.row(t)[i] - before_.row(t)[i])));
        if (std::memcmp(again.row(t), before_.row(t), sizeof(float) * size_t(out_.cols)) != 0) ++differing;
      }
    }
    return {differing, max_diff};
  }

  double take_seconds() {
    const double s = seconds_;
    seconds_ = 0;
    return s;
  }
  index_t take_rows() {
    const index_t r = rows_;
    rows_ = 0;
    return r;
  }

 private:
  ism::HeadsView<const float> q_rows(index_t first, index_t n) const {
    return {p_.q.row(first), n, c_.heads, c_.dim, p_.q.cols, c_.dim};
  }
  ism::HeadsView<const float> kv_rows(const Buffer& b, index_t first, index_t n) const {
    return {b.row(first), n, c_.kv_heads, c_.dim, b.cols, c_.dim};
  }
  ism::HeadsView<float> out_rows(Buffer& b, index_t first, index_t n) const {
    return {b.row(first), n, c_.heads, c_.dim, b.cols, c_.dim};
  }

  ism::DialogueMask kind_;
  const Config& c_;
  const Projections& p_;
  ism::Dialogue dialogue_;
  ism::PagedKVCache<float> cache_;
  index_t seq_ = 0;
  Buffer out_, before_;
  std::vector<Window> before_windows_;  // the windows that computed before_
  ism::AttentionOptions opt_;
  std::vector<Window> windows_;
  double seconds_ = 0;
  index_t rows_ = 0;
};

// The first attention call starts the library's worker threads; keep that out
// of the timings.
void warm_up(const Config& c) {
  const index_t n = 64;
  std::vector<float> q(size_t(n * c.heads * c.dim), 0.5f), kv(size_t(n * c.kv_heads * c.dim), 0.5f),
      out(q.size());
  ism::AttentionOptions opt;
  opt.threads = c.threads;
  ism::attention<float>(ism::token_major<const float>(q.data(), n, c.heads, c.dim),
                        ism::token_major<const float>(kv.data(), n, c.kv_heads, c.dim),
                        ism::token_major<const float>(kv.data(), n, c.kv_heads, c.dim),
                        ism::token_major(out.data(), n, c.heads, c.dim), ism::causal_mask(), opt);
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  if (!parse(argc, argv, c)) return 2;
  const index_t total = c.system_len + c.rounds * (c.query_len + c.answer_len);
  const Projections proj(c, total);
  warm_up(c);

  std::printf("A %lld-round chat at the attention level: one attention layer, %lld query heads over %lld KV heads,\n"
              "head dim %lld, K/V in a paged cache (%lld tokens per page). Each round: a %lld-token user query\n"
              "(prefilled at once), then a %lld-token answer decoded one token at a time.%s\n\n",
              (long long)c.rounds, (long long)c.heads, (long long)c.kv_heads, (long long)c.dim,
              (long long)c.page_size, (long long)c.query_len, (long long)c.answer_len,
              c.system_len ? (" A " + std::to_string(c.system_len) + "-token system prompt comes first.").c_str()
                           : "");
  std::printf("ISM: queries see their whole query, answers are causal, and no token sees a later turn,\n"
              "     so the cache of earlier rounds stays valid.\n"
              "prefix-LM: the whole history up to the current answer is one bidirectional prefix; a new\n"
              "     query widens it, so every earlier token's attention changes and must be recomputed.\n\n");

  Engine engines[] = {{ism::DialogueMask::Ism, c, proj, total},
                      {ism::DialogueMask::MultiTurnPrefixLM, c, proj, total},
                      {ism::DialogueMask::Causal, c, proj, total}};
  double totals[3] = {0, 0, 0};
  index_t total_rows[3] = {0, 0, 0};
  bool ism_identical = true, plm_changed = c.rounds < 2;

  std::printf("              | %-29s | %-29s | %-7s |\n", "      ISM, reusing its cache", "   multi-turn prefix-LM", "causal");
  std::printf("round  tokens | from cache  computed  attn ms | from cache  computed  attn ms | attn ms | earlier rounds replayed on the grown cache\n");
  for (index_t r = 0; r < c.rounds; ++r) {
    index_t from_cache[3] = {0, 0, 0};
    for (int e = 0; e < 3; ++e) {
      Engine& en = engines[e];
      en.begin_round();
      if (r == 0 && c.system_len > 0) en.dialogue().system_prompt(c.system_len);
      en.dialogue().add_query(c.query_len);
      from_cache[e] = en.step();
      for (index_t a = 0; a < c.answer_len; ++a) {
        en.dialogue().append_answer(1);
        en.step();
      }
    }
    double ms[3];
    index_t rows[3];
    for (int e = 0; e < 3; ++e) {
      ms[e] = 1e3 * engines[e].take_seconds();
      rows[e] = engines[e].take_rows();
      totals[e] += ms[e];
      total_rows[e] += rows[e];
    }
    std::string check = "-";
    if (r > 0) {
      const auto ism_replay = engines[0].replay_earlier_rounds();
      const auto plm_replay = engines[1].replay_earlier_rounds();
      ism_identical = ism_identical && ism_replay.first == 0;
      plm_changed = plm_changed || plm_replay.first > 0;
      char buf[160];
      std::snprintf(buf, sizeof buf, "ISM: %s | prefix-LM: %lld rows changed, max |diff| %.3g",
                    ism_replay.first == 0 ? "bit-identical" : "CHANGED", (long long)plm_replay.first,
                    plm_replay.second);
      check = buf;
    }
    std::printf("%5lld  %6lld | %10lld  %8lld  %7.2f | %10lld  %8lld  %7.2f | %7.2f | %s\n", (long long)(r + 1),
                (long long)engines[0].dialogue().length(), (long long)from_cache[0], (long long)rows[0], ms[0],
                (long long)from_cache[1], (long long)rows[1], ms[1], ms[2], check.c_str());
  }

  std::printf("\ntotal attention time: ISM %.1f ms (%lld rows computed), prefix-LM %.1f ms (%lld rows), causal %.1f ms\n",
              totals[0], (long long)total_rows[0], totals[1], (long long)total_rows[1], totals[2]);
  if (totals[0] > 0) std::printf("prefix-LM needs %.1fx the attention time of ISM for the same conversation.\n",
                                 totals[1] / totals[0]);
  std::printf("check: earlier rounds under ISM %s; under prefix-LM they %s.\n",
              ism_identical ? "stayed bit-identical" : "CHANGED (this is a bug)",
              c.rounds < 2 ? "were not tested (one round)" : plm_changed ? "changed, as expected" : "did NOT change");
  return ism_identical && plm_changed ? 0 : 1;
}
