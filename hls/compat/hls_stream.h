// Project-owned stand-in for the Vitis HLS <hls_stream.h> (see hls/README.md): an unbounded
// FIFO. C simulation runs the stages of a DATAFLOW region one after another, so a stream
// holds everything its producer wrote until the consumer runs, as in Vitis C simulation.
#pragma once
#include <deque>

namespace hls {

template <class T>
class stream {
 public:
  stream() = default;
  explicit stream(const char*) {}
  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;

  void write(const T& v) { fifo_.push_back(v); }
  // Reading an empty stream is a kernel bug; like Vitis C simulation, it yields T().
  T read() {
    if (fifo_.empty()) return T();
    T v = fifo_.front();
    fifo_.pop_front();
    return v;
  }
  void read(T& v) { v = read(); }
  bool empty() const { return fifo_.empty(); }
  bool full() const { return false; }
  std::size_t size() const { return fifo_.size(); }

 private:
  std::deque<T> fifo_;
};

}  // namespace hls
