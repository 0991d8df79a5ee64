// mini_engine: an inference engine in miniature. It serves several
// conversations at once with a small Llama-shaped decoder whose attention is
// this library's, and shows what ISM buys an engine: the KV cache of every
// layer stays valid across rounds, so each step computes only new tokens.
//
// The model: token embedding; per layer RMSNorm, Q/K/V projections, RoPE,
// grouped-query attention (ism::AttentionPlan over a paged cache), output
// projection, RMSNorm, SwiGLU MLP; final RMSNorm and LM head. Random weights
// from a seed, greedy decoding.
//
// The engine keeps one ism::Dialogue per conversation (its mask and cache
// bookkeeping) and, per layer, one ism::PagedKVCache whose page pool all
// conversations share. Conversations start one step apart, so prefill and
// decode mix within a step. Every step:
//   1. each conversation with work adds its new tokens: its next query
//      (prefill), or its next answer token plus a draft token guessed by
//      prompt lookup (speculative decoding);
//   2. its Dialogue says which rows to compute (pending()): under ISM only the
//      new tokens; under a multi-turn prefix-LM a new query changes what the
//      whole history sees, so everything is computed again;
//   3. ONE ism::AttentionPlan covers the step's requests (mixed lengths and
//      offsets) and is reused by every layer with that layer's buffers;
//   4. the draft is verified; a rejected draft is rolled back with
//      Dialogue::truncate and PagedKVCache::truncate.
//
// Afterwards every conversation is recomputed from scratch in fp64, with
// ism::reference_attention_into at every layer: the engine's hidden states at
// every layer and its logits must match, which is what multi-layer KV reuse
// requires. The same conversations are then served under a multi-turn
// prefix-LM for comparison. The program exits non-zero if a check fails.
//
//   ./build/examples/mini_engine --help
#include <ism/ism.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>

namespace {

using ism::index_t;
template <class Real>
using Mat = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class Real>
using Row = Eigen::Matrix<Real, 1, Eigen::Dynamic>;

// --- configuration ---------------------------------------------------------

struct Config {
  index_t conversations = 4;
  index_t rounds = 3;
  index_t query_len = 12;
  index_t answer_len = 8;
  index_t layers = 3;
  index_t d_model = 64;
  index_t heads = 4;
  index_t kv_heads = 2;
  index_t ffn = 128;
  index_t vocab = 128;
  index_t page_size = 8;
  int threads = 0;
  unsigned seed = 1;
  bool speculate = true;
  bool check = true;
  bool trace = false;
  index_t head_dim() const { return d_model / heads; }
};

void usage(const char* argv0) {
  const Config d;
  std::printf(
      "usage: %s [options]\n"
      "  --conversations N  conversations served at once                [%lld]\n"
      "  --rounds N         rounds (query + answer) per conversation    [%lld]\n"
      "  --query-len N      tokens per query (each conversation varies)  [%lld]\n"
      "  --answer-len N     tokens per answer, decoded greedily          [%lld]\n"
      "  --layers N         decoder layers                               [%lld]\n"
      "  --d-model N        model width                                  [%lld]\n"
      "  --heads N          query heads (head dim = d-model / heads)     [%lld]\n"
      "  --kv-heads N       KV heads (divides --heads; GQA)              [%lld]\n"
      "  --ffn N            SwiGLU hidden width                          [%lld]\n"
      "  --vocab N          vocabulary size                              [%lld]\n"
      "  --page-size N      tokens per KV-cache page                     [%lld]\n"
      "  --threads N        attention threads (0: all cores)             [%d]\n"
      "  --seed N           weights and queries                          [%u]\n"
      "  --no-speculate     decode one token per step, no draft\n"
      "  --no-check         skip the fp64 recompute (for big runs)\n"
      "  --trace            print every step\n"
      "  --help             this text\n"
      "A bigger run: --conversations 8 --rounds 4 --query-len 96 --answer-len 24 --layers 4\n"
      "              --d-model 256 --heads 8 --kv-heads 2 --ffn 768 --no-check\n",
      argv0, (long long)d.conversations, (long long)d.rounds, (long long)d.query_len, (long long)d.answer_len,
      (long long)d.layers, (long long)d.d_model, (long long)d.heads, (long long)d.kv_heads, (long long)d.ffn,
      (long long)d.vocab, (long long)d.page_size, d.threads, d.seed);
}

bool parse(int argc, char** argv, Config& c) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      usage(argv[0]);
      std::exit(0);
    }
    if (a == "--no-speculate") {
      c.speculate = false;
      continue;
    }
    if (a == "--no-check") {
      c.check = false;
      continue;
    }
    if (a == "--trace") {
      c.trace = true;
      continue;
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
    if (a == "--conversations") c.conversations = v;
    else if (a == "--rounds") c.rounds = v;
    else if (a == "--query-len") c.query_len = v;
    else if (a == "--answer-len") c.answer_len = v;
    else if (a == "--layers") c.layers = v;
    else if (a == "--d-model") c.d_model = v;
    else if (a == "--heads") c.heads = v;
    else if (a == "--kv-heads") c.kv_heads = v;
    else if (a == "--ffn") c.ffn = v;
    else if (a == "--vocab") c.vocab = v;
    else if (a == "--page-size") c.page_size = v;
    else if (a == "--threads") c.threads = int(v);
    else if (a == "--seed") c.seed = unsigned(v);
    else {
      std::fprintf(stderr, "%s: unknown option %s (try --help)\n", argv[0], a.c_str());
      return false;
    }
  }
  const bool ok = c.conversations >= 1 && c.rounds >= 1 && c.query_len >= 1 && c.answer_len >= 1 &&
                  c.layers >= 1 && c.heads >= 1 && c.kv_heads >= 1 && c.heads % c.kv_heads == 0 &&
                  c.d_model % c.heads == 0 && c.head_dim() % 2 == 0 && c.ffn >= 1 && c.vocab >= 2 &&
                  c.page_size >= 1 && c.threads >= 0;
  if (!ok)
    std::fprintf(stderr, "%s: need every size >= 1, kv-heads dividing heads, heads dividing d-model with an even "
                         "head dim (RoPE rotates pairs), vocab >= 2, threads >= 0\n", argv[0]);
  return ok;
}

// --- the model ---------------------------------------------------------------

template <class Real>
struct Layer {
  Row<Real> attn_norm, mlp_norm;
  Mat<Real> wq, wk, wv, wo;     // [d, heads*hd], [d, kv*hd] x2, [heads*hd, d]
  Mat<Real> gate, up, down;     // [d, ffn] x2, [ffn, d]
};

template <class Real>
struct Weights {
  Mat<Real> embed, lm_head;     // [vocab, d], [d, vocab]
  std::vector<Layer<Real>> layers;
  Row<Real> final_norm;

  template <class To>
  Weights<To> cast() const {
    Weights<To> w{embed.template cast<To>(), lm_head.template cast<To>(), {}, final_norm.template cast<To>()};
    for (const Layer<Real>& l : layers)
      w.layers.push_back({l.attn_norm.template cast<To>(), l.mlp_norm.template cast<To>(), l.wq.template cast<To>(),
                          l.wk.template cast<To>(), l.wv.template cast<To>(), l.wo.template cast<To>(),
                          l.gate.template cast<To>(), l.up.template cast<To>(), l.down.template cast<To>()});
    return w;
  }
};

// Entries N(0, 1/fan_in): activations keep unit scale through the layers.
Weights<float> random_weights(const Config& c) {
  std::mt19937 gen(c.seed);
  auto normal = [&](index_t rows, index_t cols, double sd) {
    std::normal_distribution<float> dist(0.f, float(sd));
    Mat<float> m(rows, cols);
    for (index_t i = 0; i < m.size(); ++i) m.data()[i] = dist(gen);
    return m;
  };
  auto norm = [&](index_t n) {
    std::uniform_real_distribution<float> dist(0.8f, 1.2f);
    Row<float> r(n);
    for (index_t i = 0; i < n; ++i) r[i] = dist(gen);
    return r;
  };
  const index_t d = c.d_model, hd = c.head_dim();
  const double s = 1.0 / std::sqrt(double(d));
  Weights<float> w{normal(c.vocab, d, 1.0), normal(d, c.vocab, s), {}, norm(d)};
  for (index_t l = 0; l < c.layers; ++l)
    w.layers.push_back({norm(d), norm(d), normal(d, c.heads * hd, s), normal(d, c.kv_heads * hd, s),
                        normal(d, c.kv_heads * hd, s), normal(c.heads * hd, d, 1.0 / std::sqrt(double(c.heads * hd))),
                        normal(d, c.ffn, s), normal(d, c.ffn, s), normal(c.ffn, d, 1.0 / std::sqrt(double(c.ffn)))});
  return w;
}

template <class Real>
Mat<Real> rms_norm(const Mat<Real>& x, const Row<Real>& w) {
  Mat<Real> y(x.rows(), x.cols());
  for (index_t r = 0; r < x.rows(); ++r)
    y.row(r) = x.row(r).cwiseProduct(w) / std::sqrt(x.row(r).squaredNorm() / Real(x.cols()) + Real(1e-6));
  return y;
}

// Rotary position embedding, in place, on rows [heads * hd] at positions pos.
template <class Real>
void rope(Mat<Real>& x, index_t heads, index_t hd, const std::vector<index_t>& pos) {
  for (index_t r = 0; r < x.rows(); ++r)
    for (index_t i = 0; i < hd / 2; ++i) {
      const double angle = double(pos[size_t(r)]) * std::pow(10000.0, -2.0 * double(i) / double(hd));
      const Real c = Real(std::cos(angle)), s = Real(std::sin(angle));
      for (index_t h = 0; h < heads; ++h) {
        Real* v = &x(r, h * hd + 2 * i);
        const Real a = v[0], b = v[1];
        v[0] = a * c - b * s;
        v[1] = a * s + b * c;
      }
    }
}

// The parts of a layer around attention, shared by the engine (float) and
// the fp64 recompute, so that the two differ only in how attention is run.
template <class Real>
struct Qkv {
  Mat<Real> q, k, v;  // [rows, heads*hd], [rows, kv*hd] x2
};

template <class Real>
Qkv<Real> attention_inputs(const Config& c, const Layer<Real>& l, const Mat<Real>& x,
                           const std::vector<index_t>& pos) {
  const Mat<Real> xn = rms_norm(x, l.attn_norm);
  Qkv<Real> t{xn * l.wq, xn * l.wk, xn * l.wv};
  rope(t.q, c.heads, c.head_dim(), pos);
  rope(t.k, c.kv_heads, c.head_dim(), pos);
  return t;
}

// x += attention output projected; x += SwiGLU MLP.
template <class Real>
void finish_layer(const Layer<Real>& l, Mat<Real>& x, const Mat<Real>& attn) {
  x += attn * l.wo;
  const Mat<Real> xn = rms_norm(x, l.mlp_norm);
  Mat<Real> g = xn * l.gate;
  const Mat<Real> u = xn * l.up;
  for (index_t i = 0; i < g.size(); ++i) g.data()[i] = g.data()[i] / (Real(1) + std::exp(-g.data()[i])) * u.data()[i];
  x += g * l.down;
}

template <class Real>
Mat<Real> embed(const Weights<Real>& w, const std::vector<int>& tokens) {
  Mat<Real> x(index_t(tokens.size()), w.embed.cols());
  for (size_t i = 0; i < tokens.size(); ++i) x.row(index_t(i)) = w.embed.row(tokens[i]);
  return x;
}

int argmax(const float* logits, index_t n) { return int(std::max_element(logits, logits + n) - logits); }

// [rows, heads, dim] views of row-major [rows, heads*dim] matrices.
template <class T>
ism::HeadsView<T> heads_view(T* data, index_t rows, index_t heads, index_t dim) {
  return ism::token_major(data, rows, heads, dim);
}

// --- the conversations ---------------------------------------------------------

// What a user sends: per round, the tokens of a query (lengths vary a little,
// so the requests of a step differ in length).
using Script = std::vector<std::vector<int>>;

std::vector<Script> random_scripts(const Config& c) {
  std::mt19937 gen(c.seed + 1);
  std::uniform_int_distribution<int> token(0, int(c.vocab) - 1);
  std::uniform_int_distribution<index_t> jitter(0, std::max<index_t>(1, c.query_len / 4));
  std::vector<Script> scripts(size_t(c.conversations));
  for (Script& s : scripts)
    for (index_t r = 0; r < c.rounds; ++r) {
      std::vector<int> q(size_t(c.query_len + jitter(gen)));
      for (int& t : q) t = token(gen);
      s.push_back(q);
    }
  return scripts;
}

struct Conversation {
  const Script* script = nullptr;
  ism::Dialogue dialogue;
  index_t seq = 0;           // its sequence in every layer's cache
  index_t start_step = 0;
  std::vector<int> tokens;   // every token so far, at its position
  index_t round = -1;        // current round; -1 before the first query
  index_t answered = 0;      // answer tokens of this round kept so far
  int next_token = -1;       // picked by the last step, not yet in the dialogue
  bool done = false;
  // For the check: each position's hidden state after every layer and, if its
  // row was sampled by its latest computation, its logits.
  std::vector<std::vector<float>> hidden;  // [layer][position * d_model + i]
  std::vector<std::vector<float>> logits;  // [position] (empty: not sampled)
};

// One conversation's part of a step.
struct Work {
  Conversation* conv;
  ism::DialogueStep step;  // rows [q_offset, n_k) against keys [0, n_k)
  bool prefill;            // a new query; else decode rows
  bool draft;              // the last decode row is a guess to verify
  index_t row0;            // its first row in the step's batch
};

struct Stats {
  index_t steps = 0, rows = 0, recomputed = 0, served = 0, accepted = 0, rejected = 0;
  double seconds = 0, plan_seconds = 0, attention_seconds = 0;
};

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// --- the engine ----------------------------------------------------------------

class Engine {
 public:
  Engine(const Config& c, const Weights<float>& w, ism::DialogueMask kind, const std::vector<Script>& scripts)
      : c_(c), w_(w) {
    index_t longest = 0;
    for (const Script& s : scripts) {
      index_t n = 0;
      for (const auto& q : s) n += index_t(q.size()) + c.answer_len + 1;
      longest = std::max(longest, n);
    }
    const index_t pages = index_t(scripts.size()) * ((longest + c.page_size - 1) / c.page_size + 1);
    for (index_t l = 0; l < c.layers; ++l) caches_.emplace_back(pages, c.page_size, c.kv_heads, c.head_dim());
    for (size_t i = 0; i < scripts.size(); ++i) {
      Conversation conv;
      conv.script = &scripts[i];
      conv.dialogue = ism::Dialogue(kind);
      conv.start_step = index_t(i);
      for (auto& cache : caches_) conv.seq = cache.add_sequence();  // the same id in every layer
      conv.hidden.assign(size_t(c.layers), std::vector<float>(size_t(longest * c.d_model)));
      conv.logits.resize(size_t(longest));
      convs_.push_back(std::move(conv));
    }
    opts_.threads = c.threads;
    budget_.threads = c.threads;
  }

  Stats serve() {
    const Clock::time_point t0 = Clock::now();
    while (step()) ++stats_.steps;
    stats_.seconds = since(t0);
    return stats_;
  }

  const std::vector<Conversation>& conversations() const { return convs_; }

 private:
  // One step of the engine; false when every conversation is done.
  bool step() {
    std::vector<Work> work;
    index_t rows = 0;
    for (Conversation& conv : convs_)
      if (std::optional<Work> w = next_work(conv)) {
        w->row0 = rows;
        rows += w->step.n_q;
        work.push_back(*w);
      }
    if (work.empty()) return std::any_of(convs_.begin(), convs_.end(), [](auto& c) { return !c.done; });

    // The step's rows, conversation after conversation, at their positions.
    std::vector<int> tokens;
    std::vector<index_t> pos;
    for (const Work& w : work)
      for (index_t p = w.step.q_offset; p < w.step.n_k; ++p) {
        tokens.push_back(w.conv->tokens[size_t(p)]);
        pos.push_back(p);
      }

    // One plan for the step: every layer attends the same rows with the same
    // masks, only the buffers change.
    const Clock::time_point t_plan = Clock::now();
    std::vector<ism::PlanRequest> requests;
    for (const Work& w : work) {
      ism::RequestShape shape;
      shape.n_q = w.step.n_q;
      shape.n_k = w.step.n_k;
      shape.q_heads = c_.heads;
      shape.kv_heads = c_.kv_heads;
      shape.dim = c_.head_dim();
      shape.q_offset = w.step.q_offset;
      requests.push_back(ism::plan_request(shape, w.conv->dialogue.mask()));
    }
    ism::AttentionPlan plan(std::move(requests), budget_);
    stats_.plan_seconds += since(t_plan);

    const index_t hd = c_.head_dim();
    Mat<float> x = embed(w_, tokens), attn(rows, c_.heads * hd);
    for (index_t l = 0; l < c_.layers; ++l) {
      const Qkv<float> t = attention_inputs(c_, w_.layers[size_t(l)], x, pos);
      ism::PagedKVCache<float>& cache = caches_[size_t(l)];
      std::vector<ism::RequestBuffers<float, ism::PagedKV<float>>> buffers;
      for (const Work& w : work) {
        // This layer's K/V of the new rows join the cache, then attention
        // reads the whole cache through the block table.
        cache.append(w.conv->seq, heads_view(t.k.data() + w.row0 * t.k.cols(), w.step.n_q, c_.kv_heads, hd),
                     heads_view(t.v.data() + w.row0 * t.v.cols(), w.step.n_q, c_.kv_heads, hd));
        buffers.push_back({heads_view(t.q.data() + w.row0 * t.q.cols(), w.step.n_q, c_.heads, hd),
                           cache.view(w.conv->seq),
                           heads_view(attn.data() + w.row0 * attn.cols(), w.step.n_q, c_.heads, hd)});
      }
      const Clock::time_point t_attn = Clock::now();
      plan.run(buffers, opts_);
      stats_.attention_seconds += since(t_attn);
      finish_layer(w_.layers[size_t(l)], x, attn);
      if (c_.check) record_hidden(work, l, x);
    }
    const Mat<float> logits = rms_norm(x, w_.final_norm) * w_.lm_head;
    std::string trace;
    for (const Work& w : work) trace += finish(w, logits);
    if (c_.trace) std::printf("  step %3lld:%s\n", (long long)stats_.steps, trace.c_str());
    return true;
  }

  // What a conversation adds to this step, if anything.
  std::optional<Work> next_work(Conversation& conv) {
    if (conv.done || stats_.steps < conv.start_step) return std::nullopt;
    Work w{&conv, {}, false, false, 0};
    ism::Dialogue& d = conv.dialogue;
    if (conv.round < 0 || conv.answered == c_.answer_len) {
      // The answer is complete (its last pick is dropped, as at an end-of-turn
      // token): the user's next query.
      if (++conv.round == index_t(conv.script->size())) {
        conv.done = true;
        return std::nullopt;
      }
      const std::vector<int>& q = (*conv.script)[size_t(conv.round)];
      conv.tokens.insert(conv.tokens.end(), q.begin(), q.end());
      d.add_query(index_t(q.size()));
      conv.answered = 0;
      w.prefill = true;
    } else {
      // The token picked last step, and a draft of the one after it.
      conv.tokens.push_back(conv.next_token);
      w.draft = c_.speculate && c_.answer_len - conv.answered >= 2;
      if (w.draft) conv.tokens.push_back(draft(conv));
      d.append_answer(w.draft ? 2 : 1);
    }
    // Under ISM the cache is valid up to the new tokens; under a multi-turn
    // prefix-LM a new query invalidates the history, and the cache goes.
    w.step = d.pending();
    stats_.recomputed += d.cached() - w.step.reused;
    for (auto& cache : caches_) cache.truncate(conv.seq, w.step.reused);
    stats_.rows += w.step.n_q;
    return w;
  }

  // Prompt lookup: the token that followed the last earlier occurrence of the
  // current one (or the current one again). Cheap, and often right on the
  // repetitive text a small random model writes.
  static int draft(const Conversation& conv) {
    const int cur = conv.tokens.back();
    for (index_t p = index_t(conv.tokens.size()) - 2; p >= 0; --p)
      if (conv.tokens[size_t(p)] == cur) return conv.tokens[size_t(p) + 1];
    return cur;
  }

  // Sampling, verification of the draft, and the rollback of a rejected one.
  // Returns what happened, for --trace.
  std::string finish(const Work& w, const Mat<float>& logits) {
    Conversation& conv = *w.conv;
    conv.dialogue.commit();
    const index_t last = w.row0 + w.step.n_q - 1;
    for (index_t r = w.row0; r <= last; ++r) {
      // Rows computed again lose their old logits; sampled rows record theirs.
      std::vector<float>& rec = conv.logits[size_t(w.step.q_offset + r - w.row0)];
      rec.clear();
      if (c_.check && (r == last || !w.prefill)) rec.assign(logits.row(r).data(), logits.row(r).data() + c_.vocab);
    }
    char what[96];
    std::snprintf(what, sizeof what, "  [%lld] %s %lld@%lld", (long long)(w.conv - convs_.data()),
                  w.prefill ? "prefill" : "decode", (long long)w.step.n_q, (long long)w.step.q_offset);
    if (w.prefill) {
      conv.next_token = argmax(logits.row(last).data(), c_.vocab);
      stats_.served += index_t((*conv.script)[size_t(conv.round)].size());
      return what;
    }
    const int pick = argmax(logits.row(w.draft ? last - 1 : last).data(), c_.vocab);
    if (!w.draft) {
      conv.next_token = pick;
      conv.answered += 1;
      stats_.served += 1;
    } else if (pick == conv.tokens.back()) {  // the draft was the model's own choice
      conv.next_token = argmax(logits.row(last).data(), c_.vocab);
      conv.answered += 2;
      stats_.served += 2;
      ++stats_.accepted;
    } else {  // rejected: take the draft back, keep the model's token
      conv.tokens.pop_back();
      conv.dialogue.truncate(conv.dialogue.length() - 1);
      for (auto& cache : caches_) cache.truncate(conv.seq, conv.dialogue.reusable());
      conv.next_token = pick;
      conv.answered += 1;
      stats_.served += 1;
      ++stats_.rejected;
      return what + std::string(" draft rolled back");
    }
    return what + std::string(w.draft ? " draft kept" : "");
  }

  void record_hidden(const std::vector<Work>& work, index_t l, const Mat<float>& x) {
    for (const Work& w : work)
      for (index_t r = 0; r < w.step.n_q; ++r)
        std::copy(x.row(w.row0 + r).data(), x.row(w.row0 + r).data() + c_.d_model,
                  w.conv->hidden[size_t(l)].data() + (w.step.q_offset + r) * c_.d_model);
  }

  const Config& c_;
  const Weights<float>& w_;
  std::vector<ism::PagedKVCache<float>> caches_;  // one page pool per layer, shared by all conversations
  std::vector<Conversation> convs_;
  ism::AttentionOptions opts_;
  ism::HostExecution budget_;
  Stats stats_;
};

// --- the check: a full fp64 recompute ----------------------------------------------

struct CheckResult {
  std::vector<double> layer_error;  // max |engine - fp64| / max |fp64| per layer
  double logit_error = 0;
  index_t positions = 0, sampled = 0;
};

// Each conversation from scratch, its final mask over all its tokens, every
// layer in fp64 with the reference attention; compared with what the engine
// computed at every layer of every position (relative to the largest value).
CheckResult check(const Config& c, const Weights<double>& w, const Engine& engine) {
  CheckResult res;
  res.layer_error.assign(size_t(c.layers), 0.0);
  std::vector<double> err(size_t(c.layers) + 1, 0.0), scale(size_t(c.layers) + 1, 0.0);
  const index_t hd = c.head_dim();
  for (const Conversation& conv : engine.conversations()) {
    const index_t n = index_t(conv.tokens.size());
    std::vector<index_t> pos(static_cast<size_t>(n));
    for (index_t p = 0; p < n; ++p) pos[size_t(p)] = p;
    Mat<double> x = embed(w, conv.tokens), attn(n, c.heads * hd);
    ism::AttentionOptions o;
    o.q_offset = 0;
    for (index_t l = 0; l < c.layers; ++l) {
      const Qkv<double> t = attention_inputs(c, w.layers[size_t(l)], x, pos);
      ism::reference_attention_into<double, double, double>(
          heads_view(t.q.data(), n, c.heads, hd), heads_view(t.k.data(), n, c.kv_heads, hd),
          heads_view(t.v.data(), n, c.kv_heads, hd), heads_view(attn.data(), n, c.heads, hd),
          conv.dialogue.mask(), o, static_cast<double*>(nullptr));
      finish_layer(w.layers[size_t(l)], x, attn);
      const float* got = conv.hidden[size_t(l)].data();
      for (index_t i = 0; i < x.size(); ++i) {
        err[size_t(l)] = std::max(err[size_t(l)], std::abs(double(got[i]) - x.data()[i]));
        scale[size_t(l)] = std::max(scale[size_t(l)], std::abs(x.data()[i]));
      }
    }
    const Mat<double> logits = rms_norm(x, w.final_norm) * w.lm_head;
    for (index_t p = 0; p < n; ++p) {
      const std::vector<float>& got = conv.logits[size_t(p)];
      if (got.empty()) continue;
      ++res.sampled;
      for (index_t v = 0; v < c.vocab; ++v) {
        err.back() = std::max(err.back(), std::abs(double(got[size_t(v)]) - logits(p, v)));
        scale.back() = std::max(scale.back(), std::abs(logits(p, v)));
      }
    }
    res.positions += n;
  }
  for (index_t l = 0; l < c.layers; ++l) res.layer_error[size_t(l)] = err[size_t(l)] / scale[size_t(l)];
  res.logit_error = err.back() / scale.back();
  return res;
}

// fp32 arithmetic against fp64 through a few layers: errors of 1e-6 or so. A
// stale cache row (a key the row should not see, or one it misses) moves
// hidden states by a sizeable fraction of their scale.
constexpr double kTolerance = 1e-4;

bool report_check(const char* name, const CheckResult& r) {
  bool ok = r.logit_error <= kTolerance;
  std::printf("  %-10s %lld positions, %lld sampled; max error / max value per layer:", name,
              (long long)r.positions, (long long)r.sampled);
  for (double e : r.layer_error) {
    std::printf(" %.1e", e);
    ok = ok && e <= kTolerance;
  }
  std::printf("; logits %.1e: %s\n", r.logit_error, ok ? "OK" : "MISMATCH");
  return ok;
}

// The first attention call starts the library's worker threads; keep that
// out of the timings.
void warm_up(const Config& c) {
  const index_t n = 64, hd = c.head_dim();
  std::vector<float> q(size_t(n * c.heads * hd), 0.5f), kv(size_t(n * c.kv_heads * hd), 0.5f), out(q.size());
  ism::AttentionOptions o;
  o.threads = c.threads;
  ism::attention<float>(heads_view<const float>(q.data(), n, c.heads, hd),
                        heads_view<const float>(kv.data(), n, c.kv_heads, hd),
                        heads_view<const float>(kv.data(), n, c.kv_heads, hd), heads_view(out.data(), n, c.heads, hd),
                        ism::causal_mask(), o);
}

}  // namespace

int main(int argc, char** argv) try {
  Config c;
  if (!parse(argc, argv, c)) return 2;
  const Weights<float> weights = random_weights(c);
  const std::vector<Script> scripts = random_scripts(c);
  warm_up(c);

  std::printf("mini_engine: %lld conversations served at once, %lld rounds each (%lld-token queries, %lld-token "
              "answers),\nstarting one step apart. Model: %lld layers, d_model %lld, %lld query heads over %lld KV "
              "heads (head dim %lld),\nSwiGLU %lld, vocabulary %lld, random weights (seed %u). KV cache: one page "
              "pool per layer shared by all\nconversations, %lld tokens per page. Decoding: greedy%s.\n\n",
              (long long)c.conversations, (long long)c.rounds, (long long)c.query_len, (long long)c.answer_len,
              (long long)c.layers, (long long)c.d_model, (long long)c.heads, (long long)c.kv_heads,
              (long long)c.head_dim(), (long long)c.ffn, (long long)c.vocab, c.seed, (long long)c.page_size,
              c.speculate ? ", one prompt-lookup draft token per step, verified" : "");

  const ism::DialogueMask kinds[] = {ism::DialogueMask::Ism, ism::DialogueMask::MultiTurnPrefixLM};
  std::vector<Engine> engines;
  std::vector<Stats> stats;
  for (ism::DialogueMask kind : kinds) {
    if (c.trace) std::printf("%s run, each step's conversations ([i] prefill/decode rows@position):\n",
                             ism::to_string(kind));
    engines.emplace_back(c, weights, kind, scripts);
    stats.push_back(engines.back().serve());
  }

  std::printf("%s%-10s %5s %9s %13s %12s %9s %9s %9s %9s\n", c.trace ? "\n" : "", "mask", "steps", "rows run",
              "history rerun", "drafts ok/no", "total ms", "attn ms", "plan ms", "tokens/s");
  for (size_t e = 0; e < engines.size(); ++e) {
    const Stats& s = stats[e];
    std::printf("%-10s %5lld %9lld %13lld %6lld/%-5lld %9.1f %9.1f %9.2f %9.0f\n", ism::to_string(kinds[e]),
                (long long)s.steps, (long long)s.rows, (long long)s.recomputed, (long long)s.accepted,
                (long long)s.rejected, 1e3 * s.seconds, 1e3 * s.attention_seconds, 1e3 * s.plan_seconds,
                double(s.served) / s.seconds);
  }
  std::printf("tokens/s: query and answer tokens served per second of whole engine steps (model included);\n"
              "attn ms: AttentionPlan::run over all layers; plan ms: plan_request + AttentionPlan, once a step.\n");

  bool ok = stats[0].recomputed == 0;
  if (!ok) std::printf("ISM recomputed %lld cached rows: KV reuse is broken\n", (long long)stats[0].recomputed);
  if (c.check) {
    std::printf("\ncheck against a full fp64 recompute of every conversation (reference attention, every layer):\n");
    const Weights<double> exact = weights.cast<double>();
    for (size_t e = 0; e < engines.size(); ++e)
      ok = report_check(ism::to_string(kinds[e]), check(c, exact, engines[e])) && ok;
  }
  if (c.speculate && stats[0].rejected == 0) std::printf("(no draft was rejected in this run: no rollback shown)\n");
  std::printf("%s\n", ok ? "all checks passed" : "CHECK FAILED");
  return ok ? 0 : 1;
} catch (const std::exception& e) {
  // The library rejects inconsistent calls (a plan run on a cache of another
  // length, a window outside the mask) with a message naming the argument.
  std::fprintf(stderr, "mini_engine: %s\n", e.what());
  return 1;
}
