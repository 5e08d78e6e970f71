// dmoe-linkemu: relays loopback TCP and UDP ports through an emulated link (delay, jitter, loss,
// bandwidth cap, partitions), for scripts and people; tests/testing/link_relay.h has the rules.
//
//   dmoe-linkemu --tcp 127.0.0.1:0=127.0.0.1:7000 --udp 127.0.0.1:0=127.0.0.1:7001 --delay-ms 25
//
// Prints on stdout, each line flushed:
//   relay tcp 127.0.0.1:P -> 127.0.0.1:Q   one per relay: TCP relays in flag order, then UDP ones
//   ready                                 every relay listens
//   partitioned                           after SIGUSR1: every relay delivers nothing
//   healed                                after SIGUSR2: delivery resumes (held TCP bytes first)
// SIGINT or SIGTERM stops every relay and exits 0. Bad flags or an address that cannot be bound
// exit 2 with a message on stderr.
#include <pthread.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "tests/testing/link_relay.h"

namespace {

using dmoe::testing::LinkOptions;
using dmoe::testing::LinkProtocol;
using dmoe::testing::LinkRelay;

std::chrono::microseconds Milliseconds(double ms) {
  return std::chrono::microseconds(std::llround(ms * 1000));
}

// Starts one relay per "LISTEN=TARGET" spec; appends them to *relays.
bool StartRelays(LinkProtocol protocol, const std::vector<std::string>& specs,
                 const LinkOptions& options, std::vector<std::unique_ptr<LinkRelay>>* relays) {
  const char* name = protocol == LinkProtocol::kTcp ? "tcp" : "udp";
  for (const std::string& spec : specs) {
    size_t eq = spec.find('=');
    if (eq == std::string::npos) {
      std::cerr << "dmoe-linkemu: --" << name << " '" << spec
                << "' is not LISTEN=TARGET, e.g. 127.0.0.1:0=127.0.0.1:7000\n";
      return false;
    }
    std::string target = spec.substr(eq + 1);
    auto relay = LinkRelay::Start(protocol, spec.substr(0, eq), target, options);
    if (!relay.ok()) {
      std::cerr << "dmoe-linkemu: --" << name << " " << spec << ": " << relay.status().ToString()
                << "\n";
      return false;
    }
    std::printf("relay %s %s -> %s\n", name, (*relay)->address().c_str(), target.c_str());
    relays->push_back(std::move(*relay));
  }
  return true;
}

void Say(const char* line) {
  std::printf("%s\n", line);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "dmoe-linkemu: relays loopback TCP and UDP ports through an emulated link (delay, jitter, "
      "loss, bandwidth cap, partitions), in place of tc netem. Only 127.0.0.0/8 addresses are "
      "accepted.\n\nPrints 'relay tcp|udp LISTEN -> TARGET' per relay, then 'ready'. SIGUSR1 "
      "partitions every relay (TCP bytes are held, UDP datagrams dropped) and prints "
      "'partitioned'; SIGUSR2 heals and prints 'healed'. SIGINT/SIGTERM stop with exit 0."};
  std::vector<std::string> tcp_specs;
  std::vector<std::string> udp_specs;
  double delay_ms = 0;
  double jitter_ms = 0;
  double loss = 0;
  double bandwidth_kbps = 0;
  double stall_probability = 0;
  double stall_ms = 200;
  uint64_t seed = 0;
  app.add_option("--tcp", tcp_specs,
                 "LISTEN=TARGET, e.g. 127.0.0.1:0=127.0.0.1:7000 (port 0 picks a free one); "
                 "repeatable");
  app.add_option("--udp", udp_specs, "LISTEN=TARGET for UDP datagrams; repeatable");
  app.add_option("--delay-ms", delay_ms, "one-way delay, each direction")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--jitter-ms", jitter_ms,
                 "uniform +- jitter per TCP chunk or datagram (TCP keeps byte order)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--loss", loss, "UDP: fraction of datagrams dropped, each direction")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--bandwidth-kbps", bandwidth_kbps,
                 "per-direction cap in kilobits (1000 bits) per second; 0 = unlimited")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--stall-probability", stall_probability,
                 "TCP: per chunk, chance the direction stalls for --stall-ms (a retransmission)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--stall-ms", stall_ms, "TCP: length of a stall")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--seed", seed, "seeds jitter, loss and stalls")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  if (tcp_specs.empty() && udp_specs.empty()) {
    std::cerr << "dmoe-linkemu: give at least one --tcp or --udp LISTEN=TARGET\n";
    return 2;
  }
  LinkOptions options{
      .delay = Milliseconds(delay_ms),
      .jitter = Milliseconds(jitter_ms),
      .loss = loss,
      .tcp_stall_probability = stall_probability,
      .stall_duration = Milliseconds(stall_ms),
      .bandwidth_bytes_per_s = static_cast<uint64_t>(std::llround(bandwidth_kbps * 1000 / 8)),
      .seed = seed,
  };

  // Signals are taken synchronously below; the relays' threads inherit the blocked mask.
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGINT, SIGTERM, SIGUSR1, SIGUSR2}) sigaddset(&signals, sig);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::vector<std::unique_ptr<LinkRelay>> relays;
  if (!StartRelays(LinkProtocol::kTcp, tcp_specs, options, &relays) ||
      !StartRelays(LinkProtocol::kUdp, udp_specs, options, &relays)) {
    return 2;
  }
  Say("ready");

  for (;;) {
    int sig = 0;
    if (sigwait(&signals, &sig) != 0) continue;
    if (sig == SIGUSR1 || sig == SIGUSR2) {
      for (auto& relay : relays) relay->SetPartitioned(sig == SIGUSR1);
      Say(sig == SIGUSR1 ? "partitioned" : "healed");
      continue;
    }
    break;
  }
  for (auto& relay : relays) relay->Stop();
  return 0;
}
