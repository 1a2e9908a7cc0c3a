// A small persistent thread pool.  parallel_for is safe to call from several threads at
// once (XLA runs independent custom calls concurrently) and the calling thread works too,
// so nested or concurrent calls cannot deadlock.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace jax_hetero {

class ThreadPool {
 public:
  static ThreadPool& instance() {
    static ThreadPool pool(default_threads());
    return pool;
  }
  int num_threads() const { return int(workers_.size()) + 1; }

  // Runs fn(task) for task in [0, num_tasks), spread over the pool and the caller.
  void parallel_for(int64_t num_tasks, const std::function<void(int64_t)>& fn) {
    if (num_tasks <= 0) return;
    if (num_tasks == 1 || workers_.empty()) {
      for (int64_t t = 0; t < num_tasks; ++t) fn(t);
      return;
    }
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->num_tasks = num_tasks;
    const int helpers = int(std::min<int64_t>(num_tasks - 1, int64_t(workers_.size())));
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (int i = 0; i < helpers; ++i) queue_.push_back(job);
    }
    cv_.notify_all();
    job->run();
    std::unique_lock<std::mutex> lock(job->mutex);
    job->done_cv.wait(lock, [&] { return job->finished == job->num_tasks; });
  }

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
  }

 private:
  struct Job {
    const std::function<void(int64_t)>* fn = nullptr;
    int64_t num_tasks = 0;
    std::atomic<int64_t> next{0};
    int64_t finished = 0;  // guarded by mutex
    std::mutex mutex;
    std::condition_variable done_cv;
    void run() {
      int64_t done = 0;
      for (int64_t t; (t = next.fetch_add(1)) < num_tasks; ++done) (*fn)(t);
      if (done == 0) return;
      std::lock_guard<std::mutex> lock(mutex);
      finished += done;
      if (finished == num_tasks) done_cv.notify_all();
    }
  };

  static int default_threads() {
    if (const char* env = std::getenv("JAX_HETERO_NUM_THREADS")) {
      const int n = std::atoi(env);
      if (n > 0) return n;
    }
    return std::max(1u, std::thread::hardware_concurrency());
  }

  explicit ThreadPool(int threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }

  void work() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job->run();
    }
  }

  std::vector<std::thread> workers_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
};

inline void parallel_for(int64_t num_tasks, const std::function<void(int64_t)>& fn) {
  ThreadPool::instance().parallel_for(num_tasks, fn);
}

}  // namespace jax_hetero
