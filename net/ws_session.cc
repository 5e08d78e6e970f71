// WsSession: one WebSocket, server or client side, following Beast's session pattern: the session
// lives as long as a handler bound with shared_from_this() is pending; every operation runs on the
// stream's strand; one read and at most one write (or close) are outstanding at any time.
#include "net/beast_internal.h"
#include "net/buffer_pool.h"

#include <spdlog/spdlog.h>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>

namespace dmoe::net::internal {

WsSession::WsSession(beast::tcp_stream&& stream, RequestHead head, WsOptions options,
                     WsHandlers handlers, Registry* registry)
    : WsConnection(std::move(head)),
      ws_(std::move(stream)),
      options_(options),
      handlers_(std::move(handlers)),
      registry_(registry),
      watch_timer_(ws_.get_executor()) {}

WsSession::~WsSession() {
  Unregister();
  // Requests begun and never ended (a handler that dropped them) must not hold the budget forever.
  if (options_.budget) {
    uint64_t bytes = reserved_;
    for (uint64_t b : held_) bytes += b;
    if (bytes > 0) options_.budget->Release(bytes);
  }
}

void WsSession::Unregister() {
  if (registry_ != nullptr && registry_id_ != 0) registry_->Remove(registry_id_);
  registry_id_ = 0;
}

void WsSession::Register() {
  if (registry_ != nullptr) registry_id_ = registry_->Add(weak_from_this());
}

void WsSession::ConfigureStream() {
  // The websocket stream keeps its own timers; the tcp_stream's must not fire underneath it.
  beast::get_lowest_layer(ws_).expires_never();
  websocket::stream_base::timeout timeouts{};
  timeouts.handshake_timeout = options_.handshake_timeout;
  timeouts.idle_timeout = options_.idle_timeout;
  timeouts.keep_alive_pings = true;
  ws_.set_option(timeouts);
  ws_.read_message_max(static_cast<size_t>(options_.max_message_bytes));
  ws_.binary(true);
  // Beast's defaults send a message as frames of 4 KiB, each its own write: 256 system calls per
  // MiB of tensor. One frame per message instead; a client, which must mask what it sends, masks
  // into a buffer of kWriteChunkBytes and writes that much at a time.
  ws_.auto_fragment(false);
  ws_.write_buffer_bytes(kWriteChunkBytes);
}

void WsSession::Accept(http::request<http::empty_body> request) {
  Register();
  ConfigureStream();
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
  ConfigureStream();
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

bool WsSession::ReadPaused() const {
  // Past the bound, and until the queue is down to half of it.
  const double share = read_paused_ ? 0.5 : 1.0;
  if (options_.max_queued_bytes > 0 && static_cast<double>(queued_bytes_.load()) >
                                           share * static_cast<double>(options_.max_queued_bytes)) {
    return true;
  }
  return options_.max_queued_bytes > 0 &&
         static_cast<double>(queued_.load()) >
             share * static_cast<double>(options_.max_queued_messages) / 2;
}

void WsSession::DoRead() {
  if (ReadPaused() && !close_requested_) {
    // A client that does not read its answers gets no more of them: OnWrite reads on once the
    // queue has drained, and Watch closes a connection whose writes stall.
    read_paused_ = true;
    return;
  }
  read_paused_ = false;
  read_buffer_.clear();
  read_into_ =
      std::make_shared<ReadBuffer>(read_buffer_, static_cast<size_t>(options_.max_message_bytes));
  // Only the start of the next message first. With a budget, the rest stays in the socket until
  // the budget has room: backpressure on the client (waiting before the read instead would not
  // hold anything back, since the read would take whatever arrives later). Either way, the buffer
  // for the rest is taken once a message is arriving, not held by an idle connection.
  ws_.async_read_some(*read_into_, kMessageStartBytes,
                      [self = shared_from_this()](beast_error ec, size_t n) {
                        if (!ec && self->options_.budget) {
                          // Its start is in memory: counted, whether or not it fits.
                          self->options_.budget->Charge(n);
                          self->reserved_ = n;
                        }
                        if (ec || self->ws_.is_message_done()) return self->OnRead(ec, 0);
                        self->reading_rest_ = true;
                        self->clock_.Start(std::chrono::steady_clock::now());
                        self->clock_.Add(n);
                        if (self->options_.budget) {
                          self->order_ = self->options_.budget->NextOrder();
                        }
                        self->Watch();
                        self->ReadRest();
                      });
}

void WsSession::Reserve(uint64_t step) {
  auto admitted = [self = shared_from_this(), step] {
    asio::post(self->ws_.get_executor(), [self, step] {
      if (!self->parked_) {  // Shutdown resumed the read already, without the room.
        self->options_.budget->Release(step);
        return;
      }
      self->parked_ = false;
      self->ticket_ = 0;
      self->reserved_ += step;
      self->clock_.Resume(std::chrono::steady_clock::now());
      self->ReadRest();
    });
  };
  if (!options_.budget->Acquire(step, reserved_, order_, std::move(admitted), &ticket_)) {
    parked_ = true;
    clock_.Pause(std::chrono::steady_clock::now());
    return;
  }
  reserved_ += step;
  ReadRest();
}

void WsSession::ReadRest() {
  const uint64_t have = read_into_->size();
  uint64_t limit = options_.max_message_bytes > have ? options_.max_message_bytes - have : 1;
  if (options_.budget && !close_requested_) {
    // Bytes are read only into room counted in the budget, and the room grows with what arrived.
    if (have >= reserved_) return Reserve(NextReadStep(have, limit));
    limit = reserved_ - have;
  }
  // Messages on a connection tend to have one size: room for the last one saves regrowing.
  if (read_buffer_.capacity() < last_message_bytes_) {
    Bytes room = options_.buffer_pool->Take(last_message_bytes_);
    room.assign(read_buffer_.begin(), read_buffer_.end());
    read_buffer_.swap(room);  // read_into_ refers to read_buffer_, which keeps its size.
  }
  ws_.async_read_some(*read_into_, static_cast<size_t>(limit),
                      [self = shared_from_this(), buffer = read_into_](beast_error ec, size_t n) {
                        self->clock_.Add(n);
                        if (ec || self->ws_.is_message_done()) return self->OnRead(ec, n);
                        self->ReadRest();
                      });
}

void WsSession::Watch() {
  if (watching_ || finished_) return;
  watching_ = true;
  watch_timer_.expires_after(kUploadCheckPeriod);
  watch_timer_.async_wait([self = shared_from_this()](beast_error ec) {
    self->watching_ = false;
    if (!ec) self->OnWatch();
  });
}

void WsSession::OnWatch() {
  if (finished_) return;
  const auto now = std::chrono::steady_clock::now();
  std::string why;
  if (writing_ && options_.write_timeout.count() > 0 &&
      now - write_started_ > options_.write_timeout) {
    why = "an answer was not taken by the client within " +
          std::to_string(options_.write_timeout.count()) + " ms";
  } else if (reading_rest_ && !parked_) {
    std::string slow = clock_.Check(now, options_.min_upload_bytes_per_second,
                                    options_.min_upload_grace, options_.message_timeout);
    if (!slow.empty()) why = "WebSocket message " + slow;
  }
  if (!why.empty()) {
    if (options_.slow_clients_cut) options_.slow_clients_cut->fetch_add(1);
    cut_ = why;
    // The pending read (or write) completes with an error and calls Finish.
    beast_error ignored;
    beast::get_lowest_layer(ws_).socket().close(ignored);
    return;
  }
  if (writing_ || reading_rest_) Watch();
}

void WsSession::OnRead(beast_error ec, size_t) {
  reading_rest_ = false;
  if (reserved_ > 0 && ec) {
    options_.budget->Release(reserved_);
    reserved_ = 0;
  }
  if (ec) {
    Status status = Status::Ok();
    if (!cut_.empty()) {
      status = DeadlineExceededError(cut_);
    } else if (ec == websocket::error::closed) {
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
  last_message_bytes_ = message.size();
  if (options_.budget) {
    // Counts the message in place of the room reserved for it.
    if (message.size() > reserved_) options_.budget->Charge(message.size() - reserved_);
    if (message.size() < reserved_) options_.budget->Release(reserved_ - message.size());
    reserved_ = 0;
    message_bytes_ = message.size();
  }
  if (handlers_.on_message) {
    try {
      handlers_.on_message(shared_from_this(), std::move(message));
    } catch (const std::exception& e) {
      spdlog::error("net: WebSocket on_message threw: {}", e.what());
    }
  }
  // Not taken by a request the handler began: the message is gone.
  if (const uint64_t bytes = message_bytes_.exchange(0); bytes > 0) options_.budget->Release(bytes);
  DoRead();
}

void WsSession::OnRequestBegun() {
  if (!options_.budget) return;
  std::lock_guard<std::mutex> lock(held_mu_);
  held_.push_back(message_bytes_.exchange(0));
}

void WsSession::OnRequestEnded() {
  if (!options_.budget) return;
  uint64_t bytes = 0;
  {
    std::lock_guard<std::mutex> lock(held_mu_);
    if (held_.empty()) return;
    // Requests may end out of order; releasing in begin order keeps the total right.
    bytes = held_.front();
    held_.pop_front();
  }
  options_.budget->Release(bytes);
}

Status WsSession::Send(Bytes message) {
  if (!open_.load()) return UnavailableError("WebSocket connection is closed");
  if (queued_.fetch_add(1) >= options_.max_queued_messages) {
    queued_.fetch_sub(1);
    return ResourceExhaustedError("WebSocket send queue is full (" +
                                  std::to_string(options_.max_queued_messages) + " messages)");
  }
  queued_bytes_.fetch_add(message.size());
  asio::post(ws_.get_executor(),
             [self = shared_from_this(), message = std::move(message)]() mutable {
               if (self->finished_ || self->closing_) {
                 self->queued_.fetch_sub(1);
                 self->queued_bytes_.fetch_sub(message.size());
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
  if (options_.write_timeout.count() > 0) {
    write_started_ = std::chrono::steady_clock::now();
    Watch();
  }
  ws_.async_write(asio::buffer(queue_.front()),
                  [self = shared_from_this()](beast_error ec, size_t n) { self->OnWrite(ec, n); });
}

void WsSession::OnWrite(beast_error ec, size_t) {
  writing_ = false;
  if (!queue_.empty()) {
    queued_bytes_.fetch_sub(queue_.front().size());
    options_.buffer_pool->Give(std::move(queue_.front()));
    queue_.pop_front();
    queued_.fetch_sub(1);
  }
  if (ec) {
    Finish(cut_.empty() ? StatusFromError(ec, "WebSocket write") : DeadlineExceededError(cut_));
    return;
  }
  if (read_paused_ && !ReadPaused()) DoRead();
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
    if (self->parked_) {
      // A read must be pending to see the close through.
      if (self->options_.budget->Cancel(self->ticket_)) self->ticket_ = 0;
      self->parked_ = false;
      self->close_requested_ = true;  // Reads on without counting: the connection is ending.
      self->ReadRest();
    } else if (self->read_paused_) {
      self->close_requested_ = true;
      self->DoRead();
    }
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
    queued_bytes_.fetch_sub(queue_.back().size());
    queue_.pop_back();
    queued_.fetch_sub(1);
  }
  slot_.reset();
  if (watching_) watch_timer_.cancel();
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
