// The fuzz targets as plain regression programs: replays every file of the
// given corpus folders (or single files), then a few thousand seeded random
// inputs. Built with any compiler, registered with ctest; the seed is printed
// so that ISM_SEED=... replays a failure.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

void run(const std::vector<std::uint8_t>& bytes) { LLVMFuzzerTestOneInput(bytes.data(), bytes.size()); }

int replay(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "cannot read %s\n", p.string().c_str());
    std::exit(2);
  }
  const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::fprintf(stderr, "replay %s (%zu bytes)\n", p.string().c_str(), bytes.size());
  run(bytes);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  int files = 0;
  long random_inputs = 2000;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--random=", 0) == 0) {
      random_inputs = std::strtol(arg.c_str() + 9, nullptr, 10);
      continue;
    }
    const std::filesystem::path p(arg);
    if (std::filesystem::is_directory(p)) {
      std::vector<std::filesystem::path> all;
      for (const auto& e : std::filesystem::directory_iterator(p))
        if (e.is_regular_file()) all.push_back(e.path());
      std::sort(all.begin(), all.end());
      for (const auto& f : all) files += replay(f);
    } else {
      files += replay(p);
    }
  }
  std::uint64_t seed = 0;
  if (const char* s = std::getenv("ISM_SEED")) seed = std::strtoull(s, nullptr, 10);
  else seed = (std::uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
  std::fprintf(stderr, "%d corpus files replayed; %ld random inputs with seed = %llu (replay with ISM_SEED=%llu)\n",
               files, random_inputs, (unsigned long long)seed, (unsigned long long)seed);
  std::mt19937_64 gen(seed);
  std::vector<std::uint8_t> bytes;
  for (long n = 0; n < random_inputs; ++n) {
    bytes.resize(std::uniform_int_distribution<std::size_t>(0, 256)(gen));
    for (auto& b : bytes) b = std::uint8_t(gen());
    run(bytes);
  }
  std::fprintf(stderr, "ok\n");
  return 0;
}
