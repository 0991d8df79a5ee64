// Prints the causal, prefix-LM and ISM masks of a small three-round dialogue as
// text art: the picture of the ISM paper, in a terminal.
//
//   ./build/examples/mask_gallery
#include <ism/ism.hpp>

#include <cstdio>
#include <string>
#include <vector>

namespace {

struct Turn {
  const char* label;
  ism::index_t length;
};

// Three rounds: user query, assistant answer.
const std::vector<Turn> kTurns = {{"Q1", 3}, {"A1", 4}, {"Q2", 2}, {"A2", 3}, {"Q3", 3}, {"A3", 2}};

std::vector<std::string> token_labels() {
  std::vector<std::string> labels;
  for (const Turn& t : kTurns)
    for (ism::index_t i = 0; i < t.length; ++i) labels.push_back(t.label);
  return labels;
}

template <class Mask>
void print_mask(const char* title, const char* note, const Mask& mask, ism::index_t n) {
  const auto labels = token_labels();
  const auto dense = ism::dense_mask<bool>(mask, n, n);
  std::printf("\n%s\n%s\n\n     ", title, note);
  for (ism::index_t k = 0; k < n; ++k) std::printf("%c", labels[size_t(k)][0]);
  std::printf("  key\n     ");
  for (ism::index_t k = 0; k < n; ++k) std::printf("%c", labels[size_t(k)][1]);
  std::printf("\n");
  for (ism::index_t q = 0; q < n; ++q) {
    std::printf(" %s  ", labels[size_t(q)].c_str());
    for (ism::index_t k = 0; k < n; ++k) std::printf("%c", dense(q, k) ? '#' : '.');
    std::printf("\n");
  }
}

}  // namespace

int main() {
  std::vector<ism::index_t> boundaries{0};
  for (const Turn& t : kTurns) boundaries.push_back(boundaries.back() + t.length);
  const ism::index_t n = boundaries.back();
  const ism::index_t history = n - kTurns.back().length;  // everything before the last answer

  std::printf("A three-round dialogue of %lld tokens: Q = user query, A = assistant answer.\n", (long long)n);
  std::printf("Row = query token, column = key token; '#' = may attend.\n");

  print_mask("CAUSAL", "Every token sees itself and what came before.", ism::causal_mask(), n);
  print_mask("PREFIX-LM over the multi-turn history (prefix = all of Q1..Q3)",
             "The prefix is bidirectional; when round 4 arrives the prefix grows and every earlier row changes.",
             ism::prefix_mask(history), n);
  const auto ism_m = ism::ism_mask(boundaries, ism::Attend::Bidirectional);
  print_mask("ISM (Intermittent Semi-working Mask)",
             "Queries are bidirectional within themselves, answers causal, nothing sees a later turn.", ism_m, n);

  std::printf("\nISM safe split points (a KV cache up to here never changes):");
  for (ism::index_t p : ism_m.safe_splits()) std::printf(" %lld", (long long)p);
  std::printf("\nTiles of 4x4 the fused kernel skips: causal %.0f%%, ISM %.0f%%, prefix-LM %.0f%%\n",
              100 * ism::BlockMap(ism::causal_mask(), n, n, 0, 4, 4).stats().skipped_fraction(),
              100 * ism::BlockMap(ism_m, n, n, 0, 4, 4).stats().skipped_fraction(),
              100 * ism::BlockMap(ism::prefix_mask(history), n, n, 0, 4, 4).stats().skipped_fraction());
  return 0;
}
