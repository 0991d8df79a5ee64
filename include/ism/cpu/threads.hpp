#pragma once
// The library's default parallel-for: a process-wide pool of worker threads
// that grows on demand. A call runs body(i) for every i in [0, n) on at most
// `threads` threads (the caller included); tasks are handed out one at a time
// from an atomic counter, so callers that list expensive tasks first get
// longest-first scheduling.
//
// Engines that own their threads pass AttentionOptions::parallel_for instead,
// and this pool is never started.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "ism/core/isa.hpp"
#include "ism/core/options.hpp"

namespace ism::cpu {
// Per instruction set (core/isa.hpp) like the rest of the backend: a program
// linking two instruction sets has one pool for each.
inline namespace ISM_SIMD_NAMESPACE {

inline int default_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

class ThreadPool {
 public:
  static ThreadPool& instance() {
    // Leaked on purpose: workers must not be joined during static destruction
    // while another static's destructor might still call attention.
    static ThreadPool* pool = new ThreadPool;
    return *pool;
  }

  // Runs body(0..n-1) on up to `threads` threads and returns when all are done.
  // Calls from inside a task (nested) and concurrent calls from several caller
  // threads are both fine: a nested call runs inline, concurrent callers take
  // turns on the pool.
  void run(index_t n, int threads, const std::function<void(index_t)>& body) {
    if (n <= 0) return;
    if (threads <= 1 || n == 1 || in_worker()) {
      for (index_t i = 0; i < n; ++i) body(i);
      return;
    }
    std::lock_guard<std::mutex> turn(dispatch_);
    const int helpers = static_cast<int>(std::min<index_t>(threads, n)) - 1;
    grow(helpers);
    Job job;
    job.body = &body;
    job.n = n;
    {
      std::lock_guard<std::mutex> lk(m_);
      job_ = &job;
      job.wanted = helpers;
      ++generation_;
    }
    cv_.notify_all();
    work(job);
    // Wait until every helper that joined has left the job.
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [&] { return job.active == 0 && job.next.load() >= job.n; });
    job_ = nullptr;
    lk.unlock();
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  struct Job {
    const std::function<void(index_t)>* body = nullptr;
    index_t n = 0;
    std::atomic<index_t> next{0};
    int wanted = 0;  // helpers still allowed to join (guarded by m_)
    int active = 0;  // helpers inside work() (guarded by m_)
    std::exception_ptr error;  // first exception (guarded by m_)
  };

  static bool& in_worker() {
    static thread_local bool flag = false;
    return flag;
  }

  void work(Job& job) {
    for (;;) {
      const index_t i = job.next.fetch_add(1);
      if (i >= job.n) break;
      try {
        (*job.body)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lk(m_);
        if (!job.error) job.error = std::current_exception();
      }
    }
  }

  void grow(int helpers) {
    while (static_cast<int>(workers_.size()) < helpers) workers_.emplace_back([this] { loop(); });
  }

  void loop() {
    in_worker() = true;
    std::uint64_t seen = 0;
    for (;;) {
      Job* job = nullptr;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
        if (job_ == nullptr || job_->wanted == 0) continue;
        job = job_;
        --job->wanted;
        ++job->active;
      }
      work(*job);
      {
        std::lock_guard<std::mutex> lk(m_);
        --job->active;
      }
      done_cv_.notify_all();
    }
  }

  std::mutex dispatch_;
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  Job* job_ = nullptr;
  std::uint64_t generation_ = 0;
  std::vector<std::thread> workers_;
};

// Runs body(0..n-1) through the caller's parallel-for if it gave one, else on
// the default pool with opt.threads threads (0: one per hardware thread).
inline void parallel_for(const HostExecution& opt, index_t n, const std::function<void(index_t)>& body) {
  if (n <= 0) return;
  if (opt.parallel_for) {
    opt.parallel_for(n, body);
    return;
  }
  const int threads = opt.threads > 0 ? opt.threads : default_threads();
  ThreadPool::instance().run(n, threads, body);
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu
