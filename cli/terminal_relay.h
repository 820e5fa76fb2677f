// `godwit exec -t` without --console-socket: godwit is its own console socket's listener. It
// receives the pty master the exec'd process makes inside the container, sizes it like its own
// terminal, puts that terminal in raw mode and copies bytes both ways until the process is done
// (Stop), then restores the terminal. Engines pass --console-socket and never get here.
#pragma once

#include <termios.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "common/result.h"
#include "common/unique_fd.h"

namespace godwit::cli {

class TerminalRelay {
 public:
  // Listens on a fresh socket in a private temporary directory (SocketPath()). kUsage when stdin
  // is not a terminal.
  static Result<std::unique_ptr<TerminalRelay>> Start();
  ~TerminalRelay();

  const std::string& SocketPath() const { return path_; }
  // The process has exited: copies what the master still holds, joins the relay thread, puts
  // the terminal back. Idempotent.
  void Stop();

 private:
  TerminalRelay() = default;
  void Run();

  std::string dir_, path_;
  UniqueFd listener_, stop_;  // stop_: an eventfd written by Stop
  termios saved_{};
  bool raw_ = false;
  std::thread thread_;
};

}  // namespace godwit::cli
