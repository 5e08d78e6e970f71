// WsSession: one WebSocket, server or client side, following Beast's session pattern: the session
// lives as long as a handler bound with shared_from_this() is pending; every operation runs on the
// stream's strand; one read and at most one write (or close) are outstanding at any time.
#include "net/beast_internal.h"

#include <spdlog/spdlog.h>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>

namespace dmoe::net::internal {

WsSession::WsSession(beast::tcp_stream&& stream, RequestHead head, WsOptions options,
                     WsHandlers handlers, Registry* registry)
    : WsConnection(std::move(head)),
      ws_(std::move(stream)),
      options_(options),
      handlers_(std::move(handlers)),
      registry_(registry) {}

WsSession::~WsSession() { Unregister(); }

void WsSession::Unregister() {
  if (registry_ != nullptr && registry_id_ != 0) registry_->Remove(registry_id_);
  registry_id_ = 0;
}

void WsSession::Register() {
  if (registry_ != nullptr) registry_id_ = registry_->Add(weak_from_this());
}

void WsSession::Accept(http::request<http::empty_body> request) {
  Register();
  // The websocket stream keeps its own timers; the tcp_stream's must not fire underneath it.
  beast::get_lowest_layer(ws_).expires_never();
  websocket::stream_base::timeout timeouts{};
  timeouts.handshake_timeout = options_.handshake_timeout;
  timeouts.idle_timeout = options_.idle_timeout;
  timeouts.keep_alive_pings = true;
  ws_.set_option(timeouts);
  ws_.read_message_max(static_cast<size_t>(options_.max_message_bytes));
  ws_.binary(true);
  ws_.async_accept(request, [self = shared_from_this()](beast_error ec) {
    if (ec) {
      self->Finish(StatusFromError(ec, "WebSocket upgrade"));
      return;
    }
    self->Opened();
  });
}

void WsSession::Handshake(std::string host, std::string target,
                          std::function<void(Result<std::shared_ptr<WsConnection>>)> done) {
  Register();
  handshake_done_ = std::move(done);
  beast::get_lowest_layer(ws_).expires_never();
  websocket::stream_base::timeout timeouts{};
  timeouts.handshake_timeout = options_.handshake_timeout;
  timeouts.idle_timeout = options_.idle_timeout;
  timeouts.keep_alive_pings = true;
  ws_.set_option(timeouts);
  ws_.read_message_max(static_cast<size_t>(options_.max_message_bytes));
  ws_.binary(true);
  Headers extra = head().headers;
  ws_.set_option(websocket::stream_base::decorator([extra](websocket::request_type& req) {
    for (const auto& [k, v] : extra.fields()) req.set(k, v);
  }));
  auto response = std::make_shared<websocket::response_type>();
  ws_.async_handshake(*response, host, target,
                      [self = shared_from_this(), response](beast_error ec) {
                        if (!ec) {
                          self->Opened();
                          return;
                        }
                        Status status = StatusFromError(ec, "WebSocket handshake");
                        if (ec == websocket::error::upgrade_declined) {
                          Response r;
                          r.status = static_cast<int>(response->result_int());
                          r.body.assign(response->body().begin(), response->body().end());
                          Status from_body = StatusFromResponse(r);
                          if (!from_body.ok()) status = from_body;
                        }
                        self->Finish(status);
                      });
}

void WsSession::Opened() {
  open_ = true;
  auto self = shared_from_this();
  if (handshake_done_) {
    auto done = std::move(handshake_done_);
    handshake_done_ = nullptr;
    done(std::shared_ptr<WsConnection>(self));
  }
  if (handlers_.on_open) handlers_.on_open(self);
  DoRead();
  if (close_requested_ && !writing_) DoClose();
}

void WsSession::DoRead() {
  read_buffer_.clear();
  read_buffer_.shrink_to_fit();
  auto buffer = std::make_shared<asio::dynamic_vector_buffer<uint8_t, std::allocator<uint8_t>>>(
      read_buffer_, static_cast<size_t>(options_.max_message_bytes));
  ws_.async_read(*buffer, [self = shared_from_this(), buffer](beast_error ec, size_t n) {
    self->OnRead(ec, n);
  });
}

void WsSession::OnRead(beast_error ec, size_t) {
  if (ec) {
    Status status = Status::Ok();
    if (ec == websocket::error::closed) {
      status = Status::Ok();
    } else if (ec == websocket::error::message_too_big || ec == websocket::error::buffer_overflow) {
      status = PayloadTooLargeError("WebSocket message larger than " +
                                    std::to_string(options_.max_message_bytes) + " bytes");
    } else {
      status = StatusFromError(ec, "WebSocket read");
    }
    Finish(status);
    return;
  }
  Bytes message = std::move(read_buffer_);
  if (handlers_.on_message) {
    try {
      handlers_.on_message(shared_from_this(), std::move(message));
    } catch (const std::exception& e) {
      spdlog::error("net: WebSocket on_message threw: {}", e.what());
    }
  }
  DoRead();
}

Status WsSession::Send(Bytes message) {
  if (!open_.load()) return UnavailableError("WebSocket connection is closed");
  if (queued_.fetch_add(1) >= options_.max_queued_messages) {
    queued_.fetch_sub(1);
    return ResourceExhaustedError("WebSocket send queue is full (" +
                                  std::to_string(options_.max_queued_messages) + " messages)");
  }
  asio::post(ws_.get_executor(),
             [self = shared_from_this(), message = std::move(message)]() mutable {
               if (self->finished_ || self->closing_) {
                 self->queued_.fetch_sub(1);
                 return;
               }
               self->queue_.push_back(std::move(message));
               if (!self->writing_) self->DoWrite();
             });
  return Status::Ok();
}

void WsSession::DoWrite() {
  if (queue_.empty()) {
    if (close_requested_) DoClose();
    return;
  }
  writing_ = true;
  ws_.async_write(asio::buffer(queue_.front()),
                  [self = shared_from_this()](beast_error ec, size_t n) { self->OnWrite(ec, n); });
}

void WsSession::OnWrite(beast_error ec, size_t) {
  writing_ = false;
  if (!queue_.empty()) {
    queue_.pop_front();
    queued_.fetch_sub(1);
  }
  if (ec) {
    Finish(StatusFromError(ec, "WebSocket write"));
    return;
  }
  DoWrite();
}

void WsSession::Close() {
  asio::post(ws_.get_executor(), [self = shared_from_this()] {
    self->close_requested_ = true;
    if (!self->writing_) self->DoClose();
  });
}

void WsSession::DoClose() {
  if (closing_ || finished_ || !open_.load()) return;
  closing_ = true;
  open_ = false;
  ws_.async_close(websocket::close_code::normal, [self = shared_from_this()](beast_error) {
    // The pending read completes with websocket::error::closed and calls Finish.
  });
}

void WsSession::Shutdown(bool force) {
  asio::post(ws_.get_executor(), [self = shared_from_this(), force] {
    if (self->finished_) return;
    if (!force) {
      // During the handshake, Opened() sees the request and closes right after it.
      self->close_requested_ = true;
      if (self->open_.load() && !self->writing_) self->DoClose();
      return;
    }
    beast_error ignored;
    beast::get_lowest_layer(self->ws_).socket().close(ignored);
  });
}

void WsSession::Finish(const Status& status) {
  open_ = false;
  if (finished_) return;
  finished_ = true;
  // A handler may keep this object; Stop() waits for open connections only.
  Unregister();
  // The message being written (if any) stays until its write completes: Asio may still read it.
  size_t keep = writing_ ? 1 : 0;
  while (queue_.size() > keep) {
    queue_.pop_back();
    queued_.fetch_sub(1);
  }
  beast_error ignored;
  beast::get_lowest_layer(ws_).socket().close(ignored);
  if (handshake_done_) {
    auto done = std::move(handshake_done_);
    handshake_done_ = nullptr;
    done(status.ok() ? UnavailableError("WebSocket closed during the handshake") : status);
    return;
  }
  if (handlers_.on_close) {
    try {
      handlers_.on_close(shared_from_this(), status);
    } catch (const std::exception& e) {
      spdlog::error("net: WebSocket on_close threw: {}", e.what());
    }
  }
}

}  // namespace dmoe::net::internal
