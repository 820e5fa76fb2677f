// Wall-clock timing for statistics and phase reports: one clock (steady), milliseconds as double.
//
//   timing::PhaseTimer t;            // starts now
//   ... fork the tree ...
//   stats.fork_ms = t.Lap("fork");   // ms since the previous lap (or the start), recorded
//   ... memory ...
//   stats.memory_ms = t.Lap("memory");
//   stats.total_ms = t.TotalMs();
// or, where phases add into a stats struct's fields: t.LapInto(&stats.uts_ms).
// A driver then reads top to bottom with one line per phase; phases() lists them in order.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace godwit::timing {

using Clock = std::chrono::steady_clock;

inline double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}
inline double MsSince(Clock::time_point a) { return MsBetween(a, Clock::now()); }

class PhaseTimer {
 public:
  PhaseTimer() : start_(Clock::now()), last_(start_) {}
  explicit PhaseTimer(Clock::time_point start) : start_(start), last_(start) {}
  // Ends the current phase: records it under name and returns its length in ms.
  double Lap(std::string name) {
    auto now = Clock::now();
    double ms = MsBetween(last_, now);
    last_ = now;
    phases_.emplace_back(std::move(name), ms);
    return ms;
  }
  // Ends the current phase and adds its length to *into (a field of a stats struct; a phase that
  // recurs adds up), without recording it in phases(). Returns its length in ms.
  double LapInto(double* into) {
    auto now = Clock::now();
    double ms = MsBetween(last_, now);
    last_ = now;
    *into += ms;
    return ms;
  }
  // Starts a new phase now without recording the time since the last lap (time spent between
  // phases that should count in none).
  void Skip() { last_ = Clock::now(); }
  double TotalMs() const { return MsSince(start_); }
  Clock::time_point start() const { return start_; }
  // When the last phase ended (or the start).
  Clock::time_point last() const { return last_; }
  const std::vector<std::pair<std::string, double>>& phases() const { return phases_; }

 private:
  Clock::time_point start_, last_;
  std::vector<std::pair<std::string, double>> phases_;
};

}  // namespace godwit::timing
