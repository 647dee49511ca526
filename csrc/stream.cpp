// same_fast._stream: the streaming loop (bounded queue, dynamic batching, reordering, statistics).
//
// Frames enter with submit() from any Python thread, wait in a bounded queue, are grouped into
// batches by size or deadline (like Triton Inference Server's dynamic batcher), handed to a Python
// step callable by worker threads, and leave through drain() strictly in submission order.
//
// GIL discipline: a worker holds the GIL only while it calls the Python step (and while it
// creates or destroys Python objects around that call). Every blocking wait (a full queue in
// submit, an empty output in drain, joining workers in close) runs with the GIL released, so
// producers, the model and the consumer overlap.
//
// Every accepted frame is reported exactly once, in order, with one status:
//   0 ok (value = the step's output), 1 error (value = message), 2 dropped (evicted by the
//   drop_oldest policy), 3 cancelled (still queued when close(drain=False) ran).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace py = pybind11;
using Clock = std::chrono::steady_clock;

namespace {

enum Status : int { kOk = 0, kError = 1, kDropped = 2, kCancelled = 3 };
enum class Policy { kBlock, kDropOldest };

// Raised by submit() when the queue stays full past the timeout (block policy) or the loop is
// closed; mapped to Python exception classes below.
struct QueueFullError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct ClosedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Item {
  uint64_t seq = 0;
  Clock::time_point t_submit;
  py::object frame;  // handed to the step
  py::object tag;    // handed back untouched with the result (e.g. a future)
};

struct Result {
  uint64_t seq = 0;
  int status = kOk;
  double latency_s = 0.0;
  Clock::time_point t_submit;
  py::object value;  // output (ok) or None
  std::string error;
  py::object tag;
};

// Latencies of the most recent frames, kept in a fixed ring so memory does not grow with stream
// length; percentiles are computed over this window on demand.
constexpr size_t kLatencyWindow = 1 << 16;

class Loop {
 public:
  Loop(py::function step, size_t capacity, size_t max_batch, double max_delay_ms,
       const std::string& policy, size_t workers)
      : step_(std::move(step)),
        capacity_(capacity),
        max_batch_(max_batch),
        max_delay_(std::chrono::duration_cast<Clock::duration>(
            std::chrono::duration<double, std::milli>(max_delay_ms))) {
    if (capacity_ < 1) throw std::invalid_argument("capacity must be >= 1");
    if (max_batch_ < 1) throw std::invalid_argument("max_batch must be >= 1");
    if (max_delay_ms < 0) throw std::invalid_argument("max_delay_ms must be >= 0");
    if (workers < 1) throw std::invalid_argument("workers must be >= 1");
    if (policy == "block") {
      policy_ = Policy::kBlock;
    } else if (policy == "drop_oldest") {
      policy_ = Policy::kDropOldest;
    } else {
      throw std::invalid_argument("policy must be 'block' or 'drop_oldest', got '" + policy + "'");
    }
    latencies_.reserve(kLatencyWindow);
    for (size_t i = 0; i < workers; ++i) threads_.emplace_back([this] { Work(); });
  }

  ~Loop() {
    // Python may destroy us with the GIL held; workers need the GIL to finish a step.
    if (!joined_) {
      py::gil_scoped_release nogil;
      Stop(/*drain=*/false);
      JoinWorkers();
    }
    // Remaining Python objects (queue, output) are destroyed here, with the GIL held.
  }

  // Accept one frame; returns its sequence number. Blocks (GIL released) while the queue is
  // full under the block policy; timeout_s < 0 waits forever, 0 never waits.
  uint64_t Submit(py::object frame, py::object tag, double timeout_s) {
    Item item;
    item.frame = std::move(frame);
    item.tag = std::move(tag);
    Item evicted;  // destroyed at the end of this function, after the GIL is re-acquired
    uint64_t seq = 0;
    {
      py::gil_scoped_release nogil;
      std::unique_lock<std::mutex> lk(mu_);
      if (closing_) throw ClosedError("stream loop is closed");
      if (queue_.size() >= capacity_) {
        if (policy_ == Policy::kBlock) {
          auto full = [this] { return queue_.size() >= capacity_ && !closing_; };
          if (timeout_s < 0) {
            not_full_.wait(lk, [&] { return !full(); });
          } else {
            auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(timeout_s));
            not_full_.wait_until(lk, until, [&] { return !full(); });
          }
          if (closing_) throw ClosedError("stream loop is closed");
          if (queue_.size() >= capacity_) {
            ++rejected_;
            throw QueueFullError("stream queue is full (" + std::to_string(capacity_) +
                                 " frames)");
          }
        } else {
          // drop_oldest: the oldest waiting frame makes room and is reported as dropped.
          evicted = std::move(queue_.front());
          queue_.pop_front();
          ++dropped_;
          Result r;
          r.seq = evicted.seq;
          r.status = kDropped;
          r.t_submit = evicted.t_submit;
          r.tag = std::move(evicted.tag);
          std::vector<Result> one;
          one.push_back(std::move(r));
          CompleteLocked(std::move(one));
        }
      }
      item.seq = next_seq_++;
      item.t_submit = Clock::now();
      seq = item.seq;
      queue_.push_back(std::move(item));
      ++submitted_;
      max_depth_ = std::max(max_depth_, queue_.size());
    }
    work_cv_.notify_one();
    return seq;
  }

  // Up to max_items finished results in submission order, waiting up to timeout_s (GIL
  // released) for the first one. Each is (seq, status, value, error, latency_s, tag).
  py::list Drain(double timeout_s, size_t max_items) {
    std::vector<Result> got;
    std::vector<py::object> dead;  // frames of cancelled items, released below with the GIL
    {
      py::gil_scoped_release nogil;
      std::unique_lock<std::mutex> lk(mu_);
      auto ready = [this] { return !out_.empty() || (joined_flag_ && queue_.empty()); };
      if (timeout_s < 0) {
        out_cv_.wait(lk, ready);
      } else if (timeout_s > 0) {
        out_cv_.wait_for(lk, std::chrono::duration<double>(timeout_s), ready);
      }
      dead.swap(graveyard_);
      while (!out_.empty() && got.size() < max_items) {
        got.push_back(std::move(out_.front()));
        out_.pop_front();
      }
    }
    py::list res;
    for (auto& r : got) {
      py::object value = r.value ? std::move(r.value) : py::none();
      py::object err = r.status == kOk ? py::object(py::none()) : py::object(py::str(r.error));
      py::object tag = r.tag ? std::move(r.tag) : py::none();
      res.append(py::make_tuple(r.seq, r.status, value, err, r.latency_s, tag));
    }
    return res;
  }

  // Stop accepting frames. drain=True finishes every queued frame; drain=False reports the
  // queued ones as cancelled. Waits for the workers (GIL released). Idempotent.
  void Close(bool drain) {
    py::gil_scoped_release nogil;
    Stop(drain);
    JoinWorkers();
  }

  py::dict Stats() {
    // Snapshot under the mutex with the GIL released, then build Python objects unlocked:
    // creating objects can run the garbage collector and arbitrary finalizers, which may
    // hand the GIL to a thread that then waits for this mutex (a deadlock).
    std::vector<double> lat;
    std::vector<std::pair<const char*, uint64_t>> counts;
    double max_latency = 0.0;
    bool closed = false;
    {
      py::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lk(mu_);
      lat = latencies_;
      counts = {{"submitted", submitted_},
                {"completed", completed_},
                {"ok", ok_},
                {"errors", errors_},
                {"dropped", dropped_},
                {"cancelled", cancelled_},
                {"rejected", rejected_},
                {"batches", batches_},
                {"failed_batches", failed_batches_},
                {"frames_in_batches", frames_in_batches_},
                {"queue_depth", queue_.size()},
                {"max_queue_depth", max_depth_},
                {"in_flight", in_flight_},
                {"waiting_output", out_.size()},
                {"reorder_pending", done_.size()},
                {"capacity", capacity_},
                {"max_batch", max_batch_},
                {"workers", threads_.size()}};
      max_latency = max_latency_;
      closed = closing_;
    }
    std::sort(lat.begin(), lat.end());
    auto pct = [&](double q) -> double {
      if (lat.empty()) return 0.0;
      size_t i = static_cast<size_t>(q * static_cast<double>(lat.size() - 1) + 0.5);
      return lat[std::min(i, lat.size() - 1)];
    };
    py::dict d;
    uint64_t batches = 0, framesb = 0;
    for (const auto& kv : counts) {
      d[kv.first] = kv.second;
      if (std::string(kv.first) == "batches") batches = kv.second;
      if (std::string(kv.first) == "frames_in_batches") framesb = kv.second;
    }
    d["max_latency_s"] = max_latency;
    d["closed"] = closed;
    d["latency_window"] = lat.size();
    d["p50_s"] = pct(0.50);
    d["p99_s"] = pct(0.99);
    d["p999_s"] = pct(0.999);
    d["window_max_s"] = lat.empty() ? 0.0 : lat.back();
    d["mean_batch"] =
        batches ? static_cast<double>(framesb) / static_cast<double>(batches) : 0.0;
    return d;
  }

  // Forget latency samples and the maxima (counters of frames stay: they are totals).
  void ResetLatency() {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lk(mu_);
    latencies_.clear();
    lat_pos_ = 0;
    max_latency_ = 0.0;
    max_depth_ = queue_.size();
  }

 private:
  void Stop(bool drain) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (!closing_) {
        closing_ = true;
        drain_ = drain;
      } else if (!drain) {
        drain_ = false;  // a later close(drain=False) may cut a draining close short
      }
    }
    work_cv_.notify_all();
    not_full_.notify_all();
  }

  void JoinWorkers() {
    std::lock_guard<std::mutex> jl(join_mu_);
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      joined_flag_ = true;
    }
    joined_ = true;
    out_cv_.notify_all();
  }

  void Work() {
    for (;;) {
      std::vector<Item> batch;
      bool more = false;
      {
        std::unique_lock<std::mutex> lk(mu_);
        work_cv_.wait(lk, [this] { return !queue_.empty() || closing_; });
        if (closing_ && !drain_) {
          CancelQueuedLocked();
          return;
        }
        if (queue_.empty()) return;  // closing and drained
        // Dynamic batching: wait for a full batch, or until the oldest frame has waited
        // max_delay, whichever comes first; closing flushes at once.
        auto deadline = queue_.front().t_submit + max_delay_;
        while (queue_.size() < max_batch_ && !closing_ && Clock::now() < deadline) {
          work_cv_.wait_until(lk, deadline);
          if (queue_.empty()) break;  // another worker took them
          deadline = queue_.front().t_submit + max_delay_;
        }
        if (queue_.empty()) continue;
        size_t n = std::min(max_batch_, queue_.size());
        batch.reserve(n);
        for (size_t i = 0; i < n; ++i) {
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
        in_flight_ += n;
        more = !queue_.empty();
      }
      not_full_.notify_all();
      if (more) work_cv_.notify_one();  // another worker may start the next batch
      std::vector<Result> results = RunStep(batch);
      {
        std::lock_guard<std::mutex> lk(mu_);
        in_flight_ -= batch.size();
        CompleteLocked(std::move(results));
      }
      {
        // batch still owns Python references (frames): release them with the GIL.
        py::gil_scoped_acquire gil;
        batch.clear();
      }
    }
  }

  std::vector<Result> RunStep(std::vector<Item>& batch) {
    std::vector<Result> results(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) {
      results[i].seq = batch[i].seq;
      results[i].t_submit = batch[i].t_submit;
    }
    py::gil_scoped_acquire gil;
    for (size_t i = 0; i < batch.size(); ++i) results[i].tag = std::move(batch[i].tag);
    std::string failure;
    try {
      py::list frames(batch.size());
      for (size_t i = 0; i < batch.size(); ++i) frames[i] = batch[i].frame;
      py::object out = step_(frames);
      py::list outs = py::list(out);
      if (outs.size() != batch.size()) {
        failure = "model step returned " + std::to_string(outs.size()) + " outputs for " +
                  std::to_string(batch.size()) + " frames";
      } else {
        for (size_t i = 0; i < batch.size(); ++i) {
          results[i].value = outs[i];
          results[i].status = kOk;
        }
      }
    } catch (py::error_already_set& e) {
      // An exception fails this batch only: its frames complete with the message.
      std::string type = e.type() ? std::string(py::str(e.type().attr("__name__"))) : "Error";
      failure = type + ": " + std::string(py::str(e.value()));
    } catch (std::exception& e) {
      failure = e.what();
    }
    if (!failure.empty()) {
      for (auto& r : results) {
        r.value = py::object();
        r.status = kError;
        r.error = failure;
      }
    }
    return results;
  }

  // Called with mu_ held. Files results, then releases every result whose turn has come.
  void CompleteLocked(std::vector<Result> results) {
    bool batch_failed = false;
    size_t nframes = 0;
    for (auto& r : results) {
      if (r.status == kOk || r.status == kError) {
        ++nframes;
        if (r.status == kError) batch_failed = true;
      }
      uint64_t s = r.seq;
      done_.emplace(s, std::move(r));
    }
    if (nframes) {
      ++batches_;
      frames_in_batches_ += nframes;
      if (batch_failed) ++failed_batches_;
    }
    bool any = false;
    auto now = Clock::now();
    for (auto it = done_.find(next_emit_); it != done_.end(); it = done_.find(next_emit_)) {
      Result r = std::move(it->second);
      done_.erase(it);
      r.latency_s = std::chrono::duration<double>(now - r.t_submit).count();
      ++completed_;
      switch (r.status) {
        case kOk:
          ++ok_;
          break;
        case kError:
          ++errors_;
          break;
        case kCancelled:
          ++cancelled_;
          break;
        default:
          break;
      }
      if (r.status == kOk || r.status == kError) RecordLatency(r.latency_s);
      out_.push_back(std::move(r));
      ++next_emit_;
      any = true;
    }
    if (any) out_cv_.notify_all();
  }

  void RecordLatency(double s) {
    if (latencies_.size() < kLatencyWindow) {
      latencies_.push_back(s);
    } else {
      latencies_[lat_pos_] = s;
      lat_pos_ = (lat_pos_ + 1) % kLatencyWindow;
    }
    max_latency_ = std::max(max_latency_, s);
  }

  void CancelQueuedLocked() {
    if (queue_.empty()) return;
    std::vector<Result> rs;
    std::vector<Item> gone;
    while (!queue_.empty()) {
      Item it = std::move(queue_.front());
      queue_.pop_front();
      Result r;
      r.seq = it.seq;
      r.status = kCancelled;
      r.t_submit = it.t_submit;
      r.tag = std::move(it.tag);
      rs.push_back(std::move(r));
      gone.push_back(std::move(it));
    }
    CompleteLocked(std::move(rs));
    // Frames of cancelled items must be released with the GIL, but we hold mu_; hand them to
    // a list that a thread with the GIL clears (the destructor or the next drain).
    for (auto& it : gone) graveyard_.push_back(std::move(it.frame));
    not_full_.notify_all();
  }

  py::function step_;
  size_t capacity_;
  size_t max_batch_;
  Clock::duration max_delay_;
  Policy policy_ = Policy::kBlock;

  std::mutex mu_;
  std::condition_variable work_cv_, not_full_, out_cv_;
  std::deque<Item> queue_;
  std::map<uint64_t, Result> done_;  // finished but waiting for an earlier frame
  std::deque<Result> out_;           // in order, waiting for drain()
  std::vector<py::object> graveyard_;
  uint64_t next_seq_ = 0, next_emit_ = 0;
  bool closing_ = false, drain_ = true, joined_flag_ = false;

  std::mutex join_mu_;
  bool joined_ = false;
  std::vector<std::thread> threads_;

  uint64_t submitted_ = 0, completed_ = 0, ok_ = 0, errors_ = 0, dropped_ = 0, cancelled_ = 0;
  uint64_t rejected_ = 0, batches_ = 0, failed_batches_ = 0, frames_in_batches_ = 0;
  size_t max_depth_ = 0, in_flight_ = 0, lat_pos_ = 0;
  double max_latency_ = 0.0;
  std::vector<double> latencies_;
};

}  // namespace

PYBIND11_MODULE(_stream, m) {
  m.doc() = "same-fast streaming loop (C++): bounded queue, dynamic batching, in-order results";
  m.attr("ABI_VERSION") = 2;
  m.attr("OK") = static_cast<int>(kOk);
  m.attr("ERROR") = static_cast<int>(kError);
  m.attr("DROPPED") = static_cast<int>(kDropped);
  m.attr("CANCELLED") = static_cast<int>(kCancelled);
  m.attr("LATENCY_WINDOW") = kLatencyWindow;
  py::register_exception<QueueFullError>(m, "QueueFull");
  py::register_exception<ClosedError>(m, "Closed");

  py::class_<Loop>(m, "Loop")
      .def(py::init<py::function, size_t, size_t, double, const std::string&, size_t>(),
           py::arg("step"), py::arg("capacity") = 64, py::arg("max_batch") = 4,
           py::arg("max_delay_ms") = 2.0, py::arg("policy") = "block", py::arg("workers") = 1,
           "step(list of frames) -> list of outputs of the same length, called by worker "
           "threads with the GIL held.")
      .def("submit", &Loop::Submit, py::arg("frame"), py::arg("tag") = py::none(),
           py::arg("timeout_s") = -1.0)
      .def("drain", &Loop::Drain, py::arg("timeout_s") = 0.0, py::arg("max_items") = 1024)
      .def("close", &Loop::Close, py::arg("drain") = true)
      .def("stats", &Loop::Stats)
      .def("reset_latency", &Loop::ResetLatency);
}
