// WebSocket connections, the same on both ends: the server hands them to a route's handlers
// (HttpServer::HandleWebSocket), the client gets them from WsClient. Messages are binary blobs
// (PROTOCOL section 4); net does not look inside them, so matching answers to requests by `id` is
// the caller's job.
#ifndef DMOE_NET_WEBSOCKET_H_
#define DMOE_NET_WEBSOCKET_H_

#include <atomic>
#include <functional>
#include <memory>

#include "core/status.h"
#include "net/http_message.h"

namespace dmoe::net {

// One open WebSocket. Owned by shared_ptr: the network side holds one while the connection is open,
// handlers may keep more. Every method is safe to call from any thread.
class WsConnection {
 public:
  virtual ~WsConnection() = default;

  // Queues a binary message. Writes go out one at a time, in Send order. kResourceExhausted when
  // the queue holds its limit of messages already (the caller decides whether to drop or retry);
  // kUnavailable when the connection is closed or closing.
  virtual Status Send(Bytes message) = 0;
  // Starts a graceful close (after queued messages are written). on_close follows.
  virtual void Close() = 0;
  virtual bool is_open() const = 0;

  // The upgrade request as the server saw it (server side), or the handshake request (client side):
  // handlers read auth headers here.
  const RequestHead& head() const { return head_; }

  // Per-connection in-flight accounting for callers that cap concurrent requests (the expert
  // server allows 64): TryBeginRequest is true and counts one more when fewer than `limit` are in
  // flight; every true must be paired with one EndRequest. On a server with a request budget
  // (HttpServerOptions::max_held_request_bytes), a request begun during on_message keeps that
  // message's bytes counted until its EndRequest, so call EndRequest once the answer is made.
  bool TryBeginRequest(int limit);
  void EndRequest();
  int in_flight() const { return in_flight_.load(); }

 protected:
  explicit WsConnection(RequestHead head) : head_(std::move(head)) {}
  // Hooks for the session: OnRequestBegun runs inside a successful TryBeginRequest, OnRequestEnded
  // inside EndRequest (any thread).
  virtual void OnRequestBegun() {}
  virtual void OnRequestEnded() {}

 private:
  const RequestHead head_;
  std::atomic<int> in_flight_{0};
};

// Callbacks of one connection. All run on the connection's strand (a network thread), one at a
// time per connection, and must not block: post real work elsewhere and Send the answer later.
struct WsHandlers {
  // Optional: once, after the handshake, before any on_message.
  std::function<void(const std::shared_ptr<WsConnection>&)> on_open;
  // Each received binary (or text) message, in arrival order. Reading continues right after the
  // call returns, so many requests can be in flight on one connection (on a server whose request
  // budget is full, the next message is left unread until earlier requests end).
  std::function<void(const std::shared_ptr<WsConnection>&, Bytes message)> on_message;
  // Optional: once, when the connection ends; OK for a clean close, else why (kPayloadTooLarge for
  // an oversized message, kDeadlineExceeded for an idle timeout, kUnavailable otherwise).
  std::function<void(const std::shared_ptr<WsConnection>&, const Status&)> on_close;
};

}  // namespace dmoe::net

#endif  // DMOE_NET_WEBSOCKET_H_
