// Mask cost: building the O(N) mask and classifying its tiles, beside the
// attention call of the same shape, to show the mask is noise next to the
// attention it feeds. Also the dense N x N additive mask an unfused path
// needs, for contrast.
//
// Case names: mask/<what>/N:<n>/segments:<s>
//   build-ism       ism::ism_mask from equal boundaries {0, n/s, ..., n}
//   build-segments  ism::segment_mask from explicit alternating segments
//   build-packed    ism::packed_mask, the s segments split over 4 documents
//   blockmap        ism::BlockMap of the ISM mask at 64 x 64 tiles
//   dense           ism::dense_mask<float> of the ISM mask (what Eigen needs)
//   attention       ism::attention on the ISM mask, fp32, 4 heads, dim 128,
//                   1 thread
#include <string>
#include <vector>

#include "baselines.hpp"
#include "ism/attention/attention.hpp"

namespace {

using namespace ism;
using namespace ism::bench;

constexpr index_t kHeads = 4, kDim = 128;
const std::vector<index_t> kLengths{1024, 4096, 16384};
const std::vector<index_t> kSegments{4, 16, 64, 256};

std::vector<Segment> alternating(const std::vector<index_t>& b) {
  std::vector<Segment> segs;
  for (size_t i = 1; i < b.size(); ++i)
    segs.push_back({b[i] - b[i - 1], i % 2 ? Attend::Bidirectional : Attend::Causal});
  return segs;
}

void build_ism(benchmark::State& state, index_t n, index_t segments) {
  const std::vector<index_t> b = equal_boundaries(n, segments);
  for (auto _ : state) {
    SegmentMask m = ism_mask(b);
    benchmark::DoNotOptimize(m);
  }
}

void build_segments(benchmark::State& state, index_t n, index_t segments) {
  const std::vector<Segment> segs = alternating(equal_boundaries(n, segments));
  for (auto _ : state) {
    SegmentMask m = segment_mask(segs);
    benchmark::DoNotOptimize(m);
  }
}

void build_packed(benchmark::State& state, index_t n, index_t segments) {
  const std::vector<Segment> segs = alternating(equal_boundaries(n, segments));
  const size_t docs = 4, per_doc = segs.size() / docs;
  std::vector<std::vector<Segment>> documents(docs);
  for (size_t i = 0; i < segs.size(); ++i) documents[std::min(i / per_doc, docs - 1)].push_back(segs[i]);
  for (auto _ : state) {
    SegmentMask m = packed_mask(documents);
    benchmark::DoNotOptimize(m);
  }
}

void blockmap(benchmark::State& state, index_t n, index_t segments) {
  const SegmentMask m = equal_ism_mask(n, segments);
  for (auto _ : state) {
    BlockMap map(m, n, n, 0, kStatTile, kStatTile);
    benchmark::DoNotOptimize(map);
  }
}

void dense(benchmark::State& state, index_t n, index_t segments) {
  const SegmentMask m = equal_ism_mask(n, segments);
  for (auto _ : state) {
    DenseMask<float> d = dense_mask<float>(m, n, n);
    benchmark::DoNotOptimize(d.data());
  }
  state.SetBytesProcessed(std::int64_t(n * n * sizeof(float)) * state.iterations());
}

void fused(benchmark::State& state, index_t n, index_t segments) {
  const SegmentMask m = equal_ism_mask(n, segments);
  AttentionData<float> data(n, n, kHeads, kHeads, kDim);
  time_fused(state, data, m, 1, 0);
}

using Case = void (*)(benchmark::State&, index_t, index_t);

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::pair<const char*, Case>> cases{{"build-ism", build_ism},
                                                        {"build-segments", build_segments},
                                                        {"build-packed", build_packed},
                                                        {"blockmap", blockmap},
                                                        {"dense", dense},
                                                        {"attention", fused}};
  for (const auto& [what, fn] : cases)
    for (index_t n : kLengths)
      for (index_t s : kSegments) {
        const std::string name =
            std::string("mask/") + what + "/N:" + std::to_string(n) + "/segments:" + std::to_string(s);
        register_case(name, benchmark::kMicrosecond, [fn = fn, n, s](benchmark::State& st) { fn(st, n, s); });
      }
  return run_benchmarks(argc, argv);
}
