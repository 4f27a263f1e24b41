// edgecut.cloud._frontend: the endpoint's gRPC transport in C++.
//
// Python's grpcio spends about 0.15 ms of the one core per call above what gRPC's C++ server
// spends on the same call (TLS, HTTP/2, framing): on a small model that is a third of the
// endpoint's time. This module runs the transport in C++ and hands the received calls to
// Python in groups, one acquisition of the GIL for every call that arrived together. Python
// decides everything else (which service, which handler, what answer): see
// edgecut.cloud.native_server, which serves the same handlers as grpcio's server does.
//
// Threads: one C++ thread drives gRPC's completion queue and never touches Python; one
// dispatcher thread waits for received calls and passes each group to the Python callable
// given to start(), as dispatch(calls, ended[, infers]): `ended` lists the calls that ended
// (finished or cancelled) since, of those Python asked about with watch_done(); `infers`,
// passed once the infer lane is enabled, holds its groups (below). Python answers a call
// with finish() (and streams with write()) from any thread; those start gRPC operations and
// return without waiting for the network.
//
// The infer lane (enable_infer_lane): plain ModelInfer calls (infer_wire.h) skip Python's
// per-call path. The dispatcher reads them here, groups those of one model, version, peer
// and input layout, and passes each group to Python as one entry of dispatch's third
// argument, every tensor a view of the message it came in; finish_infers answers all the
// calls one batch ran in one call. Python still decides everything (routing, checks,
// batching, errors), once per group instead of once per call.

#include <absl/synchronization/mutex.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "infer_wire.h"

namespace py = pybind11;

namespace {

// One call's life. A call is freed when both its last operation and its "done" notice (sent
// by gRPC when the call ends, finished or cancelled) have come back from the queue.
struct Call;

enum class Op : uint8_t { kAccepted, kRead, kWritten, kFinished, kDone };

struct Tag {
  Call* call;
  Op op;
};

struct Call {
  explicit Call(uint64_t call_id) : id(call_id), stream(&context) {}

  uint64_t id;
  grpc::GenericServerContext context;
  grpc::GenericServerAsyncReaderWriter stream;
  grpc::ByteBuffer request;
  Tag accepted{this, Op::kAccepted};
  Tag read{this, Op::kRead};
  Tag written{this, Op::kWritten};
  Tag finished{this, Op::kFinished};
  Tag done{this, Op::kDone};

  // Guarded by the server's calls mutex: streamed messages wait here while one is written.
  std::deque<grpc::ByteBuffer> outbox;
  bool reading = false;
  bool writing = false;
  std::optional<grpc::Status> final_status;  // set by finish(); sent once the outbox is empty
  bool finish_sent = false;
  bool finish_done = false;
  bool done_seen = false;
  bool notify_done = false;  // Python asked to hear when this call ends (watch_done)
  std::atomic<bool> cancelled{false};
};

// How often the certificate files are checked for changes.
constexpr int kReloadIntervalS = 1;
// The retry hint of a call refused at the open-call limit (the handlers' queues give their
// own, measured hints; this limit frees as soon as any open call is answered).
constexpr char kRetryAfterMsAtLimit[] = "50";
// The response parameters of edgecut.protocol.timing (QUEUE_MS_PARAMETER, COMPUTE_MS_PARAMETER).
constexpr char kQueueMsParameter[] = "edgecut_queue_ms";
constexpr char kComputeMsParameter[] = "edgecut_compute_ms";

std::string read_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error(path + " cannot be read");
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

grpc::ByteBuffer to_buffer(const py::bytes& data) {
  char* pointer = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(data.ptr(), &pointer, &size) != 0) throw py::error_already_set();
  grpc::Slice slice(pointer, static_cast<size_t>(size));  // copies: Python may free its bytes
  return grpc::ByteBuffer(&slice, 1);
}

py::bytes to_bytes(grpc::ByteBuffer* buffer) {
  // One contiguous copy: the request parsers in Python read one buffer.
  std::vector<grpc::Slice> slices;
  if (!buffer->Dump(&slices).ok()) return py::bytes();
  size_t total = 0;
  for (const auto& slice : slices) total += slice.size();
  PyObject* out = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(total));
  if (out == nullptr) throw py::error_already_set();
  char* cursor = PyBytes_AS_STRING(out);
  for (const auto& slice : slices) {
    std::memcpy(cursor, slice.begin(), slice.size());
    cursor += slice.size();
  }
  return py::reinterpret_steal<py::bytes>(out);
}

// The bytes of a received message in one piece (gRPC holds them as a list of slices), handed
// to Python as a read-only buffer: the infer lane's tensors are read in place, as numpy views
// that keep this alive. Not zero-filled first (std::string would: 7 % of the dispatcher).
//
// The message is placed so that its first tensor starts on a kTensorAlignment boundary:
// numpy and onnxruntime then read it where it is, where a tensor at an odd address is
// copied first (inference.run_model; 4 MiB took 0.25 ms more).
struct Payload {
  static constexpr size_t kTensorAlignment = 64;

  bool fill(grpc::ByteBuffer* buffer) {
    std::vector<grpc::Slice> slices;
    if (!buffer->Dump(&slices).ok()) return false;
    size = 0;
    for (const auto& slice : slices) size += slice.size();
    // The first bytes in one piece, to find the first tensor in (it follows a short header).
    char head[1024];
    size_t head_size = 0;
    for (const auto& slice : slices) {
      size_t take = std::min(slice.size(), sizeof(head) - head_size);
      std::memcpy(head + head_size, slice.begin(), take);
      head_size += take;
      if (head_size == sizeof(head)) break;
    }
    storage.reset(new char[size + kTensorAlignment]);
    data = storage.get();
    auto tensor = infer_wire::first_raw_offset(std::string_view(head, head_size));
    if (tensor) {
      auto at = reinterpret_cast<uintptr_t>(data) + *tensor;
      data += (kTensorAlignment - at % kTensorAlignment) % kTensorAlignment;
    }
    char* cursor = data;
    for (const auto& slice : slices) {
      std::memcpy(cursor, slice.begin(), slice.size());
      cursor += slice.size();
    }
    return true;
  }
  std::string_view view() const { return std::string_view(data, size); }

  std::unique_ptr<char[]> storage;
  char* data = nullptr;  // the message, within storage
  size_t size = 0;
};

// What Python receives for each call: (id, method, request bytes, metadata, peer common
// name or None, seconds left before the deadline or None, peer address).
struct Received {
  uint64_t id;
  std::string method;
  grpc::ByteBuffer request;
  std::unique_ptr<Payload> message;  // the request made contiguous already (infer lane)
  std::vector<std::pair<std::string, std::string>> metadata;
  std::optional<std::string> peer;
  std::optional<double> time_left_s;
  std::string address;  // gRPC's name for the peer ("ipv4:127.0.0.1:50312")
};

// A call taken by the infer lane: its message, and the plain request read from it.
struct LaneCall {
  Received received;
  std::unique_ptr<Payload> message = std::make_unique<Payload>();
  infer_wire::Request request;  // views into `message`
};

// One output given to finish_infers, read in place from a C-contiguous Python buffer.
struct OutputColumn {
  OutputColumn(std::string name_, std::string datatype_, std::vector<int64_t> inner_,
               const py::handle& buffer)
      : name(std::move(name_)), datatype(std::move(datatype_)), inner(std::move(inner_)) {
    row_bytes = infer_wire::element_size(datatype);
    if (row_bytes == 0) {
      throw std::invalid_argument("finish_infers: datatype " + datatype + " has no fixed size");
    }
    for (int64_t dim : inner) {
      if (dim < 0) throw std::invalid_argument("finish_infers: negative dimension");
      row_bytes *= static_cast<size_t>(dim);
    }
    if (PyObject_GetBuffer(buffer.ptr(), &view, PyBUF_C_CONTIGUOUS) != 0) {
      throw py::error_already_set();
    }
    held = true;
  }
  OutputColumn(const OutputColumn&) = delete;
  OutputColumn& operator=(const OutputColumn&) = delete;
  ~OutputColumn() {
    if (held) PyBuffer_Release(&view);  // finish_infers holds the GIL again by then
  }

  const char* data() const { return static_cast<const char*>(view.buf); }
  size_t bytes() const { return static_cast<size_t>(view.len); }

  std::string name;
  std::string datatype;
  std::vector<int64_t> inner;
  size_t row_bytes = 0;
  Py_buffer view{};
  bool held = false;
};

// Which lane calls may share a group: same model, version, peer, input names, datatypes and
// shapes, and outputs asked for. Each part is length-prefixed, so none can pass for another.
std::string lane_key(const LaneCall& call) {
  std::string key;
  auto part = [&key](std::string_view text) {
    key += std::to_string(text.size());
    key += ':';
    key.append(text.data(), text.size());
  };
  const infer_wire::Request& request = call.request;
  part(request.model_name);
  part(request.model_version);
  part(call.received.peer ? "+" + *call.received.peer : "-");
  for (const auto& input : request.inputs) {
    part(input.name);
    part(input.datatype);
    for (int64_t dim : input.shape) part(std::to_string(dim));
    part("|");
  }
  for (const auto& output : request.outputs) part(output);
  return key;
}

py::bytes view_bytes(std::string_view text) { return py::bytes(text.data(), text.size()); }

// `payload` handed to Python as a memoryview, which keeps it alive and reads as bytes do.
py::object read_only_view(std::unique_ptr<Payload> payload) {
  py::object owner = py::cast(payload.release(), py::return_value_policy::take_ownership);
  PyObject* view = PyMemoryView_FromObject(owner.ptr());
  if (view == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(view);
}

class Frontend {
 public:
  // `tls_dir` holds server.key, server.crt and ca.crt (edgecut certs init); without it the
  // port is plaintext. `mutual` asks every client for a certificate the CA signed. With
  // `reload`, gRPC re-reads the files when they change: certificates rotate without a restart
  // (gRPC 1.51 loads whatever it finds, so the Python side hands it only consistent sets).
  // At most `max_open_calls` calls are open at once (received, running or being answered);
  // one more is answered RESOURCE_EXHAUSTED at once, as grpcio's maximum_concurrent_rpcs does.
  // `receive_window_bytes` > 0 turns gRPC's BDP probing off and lets each call's request
  // have that many bytes in flight instead (see RECEIVE_WINDOW_BYTES in server.py for why);
  // 0 keeps gRPC's defaults. `channel_args` are more of gRPC's integer channel arguments
  // (the keepalive policy: see KEEPALIVE_OPTIONS in server.py), as grpcio's server options.
  Frontend(const std::string& address, std::optional<std::string> tls_dir, bool mutual,
           bool reload, int max_message_bytes, int max_open_calls, int accept_depth,
           int receive_window_bytes, bool yield_to_models,
           const std::vector<std::pair<std::string, int>>& channel_args)
      : max_open_calls_(static_cast<size_t>(max_open_calls)), accept_depth_(accept_depth),
        yields_(yield_to_models) {
    std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
    if (tls_dir) credentials = tls_credentials(*tls_dir, mutual, reload);
    grpc::ServerBuilder builder;
    builder.AddListeningPort(address, credentials, &port_);
    builder.SetMaxReceiveMessageSize(max_message_bytes);
    builder.SetMaxSendMessageSize(max_message_bytes);
    // Without this a second server on the same port would bind silently and share it.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    for (const auto& [name, value] : channel_args) builder.AddChannelArgument(name, value);
    if (receive_window_bytes > 0) {
      builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
      builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, receive_window_bytes);
    }
    builder.RegisterAsyncGenericService(&service_);
    queue_ = builder.AddCompletionQueue();
    server_ = builder.BuildAndStart();
    if (!server_ || port_ == 0) {
      if (server_) server_->Shutdown();
      queue_->Shutdown();
      void* tag = nullptr;
      bool ok = false;
      while (queue_->Next(&tag, &ok)) {
      }
      throw std::runtime_error("cannot listen on " + address);
    }
  }

  ~Frontend() { stop(0.0); }

  int port() const { return port_; }

  void start(py::object dispatch) {
    if (started_ || stopped_) throw std::runtime_error("a frontend starts once, before stop()");
    started_ = true;
    dispatch_ = std::move(dispatch);
    for (int i = 0; i < accept_depth_; ++i) accept();
    py::gil_scoped_release release;
    poller_ = std::thread([this] {
      yield_to_models();
      poll();
    });
    dispatcher_ = std::thread([this] {
      yield_to_models();
      dispatch_loop();
    });
    // Named for top -H and perf: which thread is the transport's, which hands calls over.
    pthread_setname_np(poller_.native_handle(), "edgecut-grpc-cq");
    pthread_setname_np(dispatcher_.native_handle(), "edgecut-handoff");  // 15 chars at most
  }

  // Answer call `id`: send what write() queued, then `payload` if given, then the status.
  bool finish(uint64_t id, int code, const std::string& details,
              std::optional<py::bytes> payload,
              const std::vector<std::pair<std::string, std::string>>& trailing) {
    std::optional<grpc::ByteBuffer> last;
    if (payload) last = to_buffer(*payload);
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(calls_mutex_);
    Call* call = find(id);
    if (call == nullptr || call->final_status) return false;
    for (const auto& [key, value] : trailing) call->context.AddTrailingMetadata(key, value);
    if (last) call->outbox.push_back(std::move(*last));
    call->final_status = grpc::Status(static_cast<grpc::StatusCode>(code), details);
    pump(call);
    return true;
  }

  // Queue one message of a server-streaming answer; false once the call has ended.
  bool write(uint64_t id, const py::bytes& payload) {
    grpc::ByteBuffer buffer = to_buffer(payload);
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(calls_mutex_);
    Call* call = find(id);
    if (call == nullptr || call->final_status || call->cancelled) return false;
    call->outbox.push_back(std::move(buffer));
    pump(call);
    return true;
  }

  // Take the plain ModelInfer calls of `method` through the infer lane (see the top of this
  // file), except those to `excluded_models`. Before start().
  void enable_infer_lane(const std::string& method,
                         const std::vector<std::string>& excluded_models) {
    if (started_) throw std::runtime_error("enable_infer_lane comes before start()");
    infer_method_ = method;
    infer_excluded_ = {excluded_models.begin(), excluded_models.end()};
  }

  // Answer infer-lane calls from one run: `outputs` holds (name, datatype, inner shape,
  // buffer) per output, each buffer C-contiguous with the rows of every call in turn; call i
  // gets the next rows[i] of them. `queue_ms` and `compute_ms`, when given (one per call),
  // go into each response's parameters as edgecut_queue_ms and edgecut_compute_ms
  // (edgecut.protocol.timing). Returns how many calls were still open to answer; with
  // `keep`, also the answers' bytes of the calls whose `keep` entry is true (None for the
  // others), for the server to give again to a repeated request id.
  py::object finish_infers(const std::vector<uint64_t>& call_ids,
                           const std::vector<std::string>& request_ids,
                           const std::vector<int64_t>& rows, const std::string& model_name,
                           const std::string& model_version, const py::list& outputs,
                           const std::vector<double>& queue_ms,
                           const std::vector<double>& compute_ms,
                           const std::vector<bool>& keep) {
    if (request_ids.size() != call_ids.size() || rows.size() != call_ids.size()) {
      throw std::invalid_argument(
          "finish_infers: call_ids, request_ids and rows differ in length");
    }
    bool timed = !queue_ms.empty() || !compute_ms.empty();
    if (timed && (queue_ms.size() != call_ids.size() || compute_ms.size() != call_ids.size())) {
      throw std::invalid_argument(
          "finish_infers: queue_ms and compute_ms need one entry per call");
    }
    if (!keep.empty() && keep.size() != call_ids.size()) {
      throw std::invalid_argument("finish_infers: keep needs one entry per call");
    }
    size_t total_rows = 0;
    for (int64_t count : rows) {
      if (count < 0) throw std::invalid_argument("finish_infers: negative rows");
      total_rows += static_cast<size_t>(count);
    }
    std::vector<std::unique_ptr<OutputColumn>> columns;
    for (const auto& item : outputs) {
      auto entry = item.cast<py::tuple>();
      if (entry.size() != 4) {
        throw std::invalid_argument(
            "finish_infers: outputs are (name, datatype, inner shape, buffer)");
      }
      columns.push_back(std::make_unique<OutputColumn>(
          entry[0].cast<std::string>(), entry[1].cast<std::string>(),
          entry[2].cast<std::vector<int64_t>>(), entry[3]));
      const OutputColumn& column = *columns.back();
      if (column.row_bytes * total_rows != column.bytes()) {
        throw std::invalid_argument("finish_infers: output " + column.name + " holds " +
                                    std::to_string(column.bytes()) + " bytes, not " +
                                    std::to_string(total_rows) + " rows of " +
                                    std::to_string(column.row_bytes));
      }
    }
    size_t answered = 0;
    std::vector<grpc::ByteBuffer> answers(call_ids.size());
    {
      py::gil_scoped_release release;
      answered = answer_infers(call_ids, request_ids, rows, model_name, model_version,
                               columns, timed ? &queue_ms : nullptr,
                               timed ? &compute_ms : nullptr, keep, &answers);
    }
    if (keep.empty()) return py::int_(answered);
    py::list kept;
    for (size_t i = 0; i < call_ids.size(); ++i) {
      if (!keep[i]) {
        kept.append(py::none());
        continue;
      }
      // The slice is shared with the call being answered: one copy, into Python's bytes.
      std::vector<grpc::Slice> slices;
      if (!answers[i].Dump(&slices).ok() || slices.size() != 1) {
        kept.append(py::none());
        continue;
      }
      kept.append(py::bytes(reinterpret_cast<const char*>(slices[0].begin()), slices[0].size()));
    }
    return py::make_tuple(answered, kept);
  }

  // finish_infers' work without the GIL: each call's response written and sent. `answers`
  // keeps a reference to the responses that `keep` marks.
  size_t answer_infers(const std::vector<uint64_t>& call_ids,
                       const std::vector<std::string>& request_ids,
                       const std::vector<int64_t>& rows, const std::string& model_name,
                       const std::string& model_version,
                       const std::vector<std::unique_ptr<OutputColumn>>& columns,
                       const std::vector<double>* queue_ms,
                       const std::vector<double>* compute_ms, const std::vector<bool>& keep,
                       std::vector<grpc::ByteBuffer>* answers) {
    size_t answered = 0;
    std::vector<infer_wire::Output> parts(columns.size());
    std::vector<size_t> offsets(columns.size(), 0);
    std::vector<infer_wire::DoubleParameter> parameters;
    for (size_t i = 0; i < call_ids.size(); ++i) {
      for (size_t j = 0; j < columns.size(); ++j) {
        const OutputColumn& column = *columns[j];
        size_t size = column.row_bytes * static_cast<size_t>(rows[i]);
        parts[j].name = column.name;
        parts[j].datatype = column.datatype;
        parts[j].shape.assign(1, rows[i]);
        parts[j].shape.insert(parts[j].shape.end(), column.inner.begin(), column.inner.end());
        parts[j].raw = std::string_view(column.data() + offsets[j], size);
        offsets[j] += size;
      }
      parameters.clear();
      if (queue_ms != nullptr) {
        parameters.push_back({kQueueMsParameter, (*queue_ms)[i]});
        parameters.push_back({kComputeMsParameter, (*compute_ms)[i]});
      }
      infer_wire::Response response(model_name, model_version, request_ids[i], parts,
                                    parameters);
      grpc::Slice slice(response.size());
      response.write(reinterpret_cast<char*>(const_cast<uint8_t*>(slice.begin())));
      (*answers)[i] = grpc::ByteBuffer(&slice, 1);
    }
    std::lock_guard<std::mutex> lock(calls_mutex_);
    for (size_t i = 0; i < call_ids.size(); ++i) {
      Call* call = find(call_ids[i]);
      if (call == nullptr || call->final_status) continue;
      if (!keep.empty() && keep[i]) {
        call->outbox.push_back((*answers)[i]);  // a ByteBuffer copy shares its slices
      } else {
        call->outbox.push_back(std::move((*answers)[i]));
      }
      call->final_status = grpc::Status::OK;
      pump(call);
      ++answered;
    }
    return answered;
  }

  // Report the call's end (finished or cancelled) to the dispatch callable's `ended` list;
  // false when it has ended already.
  bool watch_done(uint64_t id) {
    std::lock_guard<std::mutex> lock(calls_mutex_);
    Call* call = find(id);
    if (call == nullptr || call->done_seen) return false;
    call->notify_done = true;
    return true;
  }

  bool cancelled(uint64_t id) {
    std::lock_guard<std::mutex> lock(calls_mutex_);
    Call* call = find(id);
    return call == nullptr || call->cancelled.load();
  }

  // How many calls the infer lane has taken so far.
  uint64_t lane_calls() const { return lane_calls_.load(); }

  // How many calls were refused for arriving with the open-call limit reached.
  uint64_t refused_calls() const { return refused_calls_.load(); }

  size_t open_calls() {
    std::lock_guard<std::mutex> lock(calls_mutex_);
    return calls_.size();
  }

  // Stop accepting calls, cancel what is still open after `grace_s`, and join the threads.
  void stop(double grace_s) {
    if (stopped_.exchange(true)) return;
    {
      py::gil_scoped_release release;
      auto deadline = std::chrono::system_clock::now() +
                      std::chrono::microseconds(static_cast<int64_t>(grace_s * 1e6));
      server_->Shutdown(deadline);
      {
        // From here no operation may start: gRPC aborts the process when one is started on
        // a completion queue that is shut down, and Python threads (a model's answer, an
        // error) and the poller (the next write of a call) may still try.
        std::lock_guard<std::mutex> lock(calls_mutex_);
        queue_closed_ = true;
      }
      queue_->Shutdown();
      if (poller_.joinable()) {
        poller_.join();
      } else {  // never started: nothing was asked of the queue but its shutdown
        void* tag = nullptr;
        bool ok = false;
        while (queue_->Next(&tag, &ok)) {
        }
      }
      {
        std::lock_guard<std::mutex> lock(received_mutex_);
        closing_ = true;
      }
      received_ready_.notify_all();
      if (dispatcher_.joinable()) dispatcher_.join();
      // The queue is drained: every operation has come back, so no call is in use.
      for (auto& [id, call] : calls_) delete call;
      calls_.clear();
      server_.reset();
      queue_.reset();
    }
    dispatch_ = py::object();
  }

 private:
  // With `yield_to_models`, the calling thread (the poller or the dispatcher) runs under
  // SCHED_BATCH: Linux then never lets its wake-ups preempt a running thread, so arriving
  // bytes no longer interrupt a model run every millisecond; they wait for its time slice to
  // end or the run to finish, and are read in larger gulps. On an idle core it runs at once,
  // as before. Threads it starts inherit the policy: the model workers Python starts on a
  // first request set the default back (edgecut.cloud.threads). Measured on one core, 32
  // tritonclient clients: the small CNN 1155 -> 1244 requests/s (batching on) and
  // 1003 -> 1095 (off), the wide MLP 2395 -> 2655; one client p50 1.49 -> 1.29 ms. Lowering
  // one's own policy needs no privilege; where it fails (a seccomp filter), the thread
  // stays as it was.
  void yield_to_models() {
    if (!yields_) return;
    sched_param param{};
    if (sched_setscheduler(0, SCHED_BATCH, &param) != 0) yields_ = false;
  }

  // Without `mutual` no CA is read: clients are not asked for certificates.
  static std::shared_ptr<grpc::ServerCredentials> tls_credentials(const std::string& dir,
                                                                  bool mutual, bool reload) {
    std::string ca_path = mutual ? dir + "/ca.crt" : "";
    std::shared_ptr<grpc::experimental::CertificateProviderInterface> provider;
    if (reload) {
      provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
          dir + "/server.key", dir + "/server.crt", ca_path, kReloadIntervalS);
    } else {
      provider = std::make_shared<grpc::experimental::StaticDataCertificateProvider>(
          mutual ? read_file(ca_path) : std::string(),
          std::vector<grpc::experimental::IdentityKeyCertPair>{
              {read_file(dir + "/server.key"), read_file(dir + "/server.crt")}});
    }
    grpc::experimental::TlsServerCredentialsOptions options(provider);
    options.watch_identity_key_cert_pairs();
    if (mutual) {
      options.watch_root_certs();
      options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    } else {
      options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    }
    return grpc::experimental::TlsServerCredentials(options);
  }

  Call* find(uint64_t id) {
    auto it = calls_.find(id);
    return it == calls_.end() ? nullptr : it->second;
  }

  void accept() {
    auto* call = new Call(next_id_++);
    call->context.AsyncNotifyWhenDone(&call->done);
    service_.RequestCall(&call->context, &call->stream, queue_.get(), queue_.get(),
                         &call->accepted);
  }

  // Start the next write, or the final status once nothing is left to write; nothing once
  // the queue is closed (stop(): the call is cancelled and freed there). Holds calls_mutex_.
  void pump(Call* call) {
    if (queue_closed_ || call->writing || call->finish_sent) return;
    if (!call->outbox.empty() && !(call->final_status && call->outbox.size() == 1)) {
      call->writing = true;
      call->stream.Write(call->outbox.front(), &call->written);
      return;
    }
    if (!call->final_status) return;
    call->finish_sent = true;
    if (call->outbox.empty()) {
      call->stream.Finish(*call->final_status, &call->finished);
    } else if (call->final_status->ok()) {
      call->stream.WriteAndFinish(call->outbox.front(), grpc::WriteOptions(),
                                  *call->final_status, &call->finished);
    } else {
      // An error ends the call without its last message (gRPC sends no message with one).
      call->stream.Finish(*call->final_status, &call->finished);
    }
  }

  void poll() {
    void* raw = nullptr;
    bool ok = false;
    while (queue_->Next(&raw, &ok)) {
      auto* tag = static_cast<Tag*>(raw);
      Call* call = tag->call;
      if (tag->op == Op::kAccepted && !ok) {  // shutting down: the call never started
        delete call;
        continue;
      }
      if (tag->op == Op::kAccepted && !stopped_) accept();
      bool received = false;
      {
        std::lock_guard<std::mutex> lock(calls_mutex_);
        switch (tag->op) {
          case Op::kAccepted:
            calls_.emplace(call->id, call);
            if (calls_.size() > max_open_calls_) {
              ++refused_calls_;
              // A short back-off: the limit frees as the open calls are answered.
              call->context.AddTrailingMetadata("retry-after-ms", kRetryAfterMsAtLimit);
              call->final_status = grpc::Status(
                  grpc::StatusCode::RESOURCE_EXHAUSTED,
                  "the endpoint has " + std::to_string(max_open_calls_) +
                      " calls open already (its limit); retry later");
              pump(call);
            } else if (!queue_closed_) {
              call->reading = true;
              call->stream.Read(&call->request, &call->read);
            }
            break;
          case Op::kRead:
            call->reading = false;
            if (ok) {
              received = true;
            } else if (!call->final_status) {  // the client closed without a message
              call->final_status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                                "the call carried no request message");
              pump(call);
            }
            break;
          case Op::kWritten:
            call->writing = false;
            call->outbox.pop_front();
            if (!ok) {
              call->outbox.clear();
              call->cancelled = true;
              if (!call->final_status) call->final_status = grpc::Status::CANCELLED;
            }
            pump(call);
            break;
          case Op::kFinished:
            call->finish_done = true;
            break;
          case Op::kDone:
            call->done_seen = true;
            if (call->context.IsCancelled()) call->cancelled = true;
            if (call->notify_done) {
              std::lock_guard<std::mutex> ended_lock(received_mutex_);
              ended_.push_back(call->id);
              received_ready_.notify_one();
            }
            break;
        }
        if (settled(call)) {
          calls_.erase(call->id);
          delete call;
          continue;
        }
      }
      if (received) hand_over(call);
    }
  }

  // Whether nothing of the call's is outstanding any more: gRPC said it is done, and no read,
  // write or finish of it is waiting in the queue. Holds calls_mutex_.
  static bool settled(const Call* call) {
    return call->done_seen && !call->reading && !call->writing &&
           (call->finish_done || !call->finish_sent);
  }

  void hand_over(Call* call) {
    Received received;
    received.id = call->id;
    received.method = call->context.method();
    received.request = std::move(call->request);
    for (const auto& [key, value] : call->context.client_metadata()) {
      received.metadata.emplace_back(std::string(key.data(), key.size()),
                                     std::string(value.data(), value.size()));
    }
    received.address = call->context.peer();
    auto auth = call->context.auth_context();
    if (auth) {
      auto names = auth->FindPropertyValues("x509_common_name");
      if (!names.empty()) received.peer = std::string(names[0].data(), names[0].size());
    }
    auto deadline = call->context.raw_deadline();
    if (gpr_time_cmp(deadline, gpr_inf_future(deadline.clock_type)) != 0) {
      auto now = gpr_now(deadline.clock_type);
      received.time_left_s = gpr_timespec_to_micros(gpr_time_sub(deadline, now)) / 1e6;
    }
    {
      std::lock_guard<std::mutex> lock(received_mutex_);
      received_.push_back(std::move(received));
    }
    received_ready_.notify_one();
  }

  void dispatch_loop() {
    // One Python thread state for the thread's whole life: pybind11's gil_scoped_acquire
    // would make and free one per group, with its frame stack (an mmap and a munmap each).
    PyGILState_STATE gil = PyGILState_Ensure();
    PyThreadState* state = PyEval_SaveThread();
    std::vector<Received> group;
    std::vector<uint64_t> ended;
    std::vector<std::unique_ptr<LaneCall>> lane;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(received_mutex_);
        received_ready_.wait(
            lock, [this] { return closing_ || !received_.empty() || !ended_.empty(); });
        if (received_.empty() && ended_.empty()) break;  // closing, nothing left to pass on
        group.assign(std::make_move_iterator(received_.begin()),
                     std::make_move_iterator(received_.end()));
        received_.clear();
        ended.swap(ended_);
      }
      take_lane_calls(&group, &lane);
      PyEval_RestoreThread(state);
      try {
        py::list calls;
        for (auto& item : group) {
          py::object peer = item.peer ? py::object(py::str(*item.peer)) : py::none();
          py::object left = item.time_left_s ? py::object(py::float_(*item.time_left_s))
                                             : py::none();
          py::list metadata;
          for (const auto& [key, value] : item.metadata) {
            metadata.append(py::make_tuple(py::str(key), py::bytes(value)));
          }
          // A ModelInfer call the lane left keeps the copy it made, as a read-only buffer:
          // its request is read in place as bytes would be (rawfields), not copied again.
          py::object payload = item.message ? read_only_view(std::move(item.message))
                                            : py::object(to_bytes(&item.request));
          calls.append(py::make_tuple(item.id, py::str(item.method), payload, metadata, peer,
                                      left, py::str(item.address)));
        }
        group.clear();
        py::list infers = lane_groups(lane);
        lane.clear();
        py::list ended_ids;
        for (uint64_t id : ended) ended_ids.append(id);
        ended.clear();
        if (infer_method_.empty()) {
          dispatch_(calls, ended_ids);  // without the lane, the two-argument form
        } else {
          dispatch_(calls, ended_ids, infers);
        }
      } catch (py::error_already_set& error) {
        // The dispatcher answers its own failures; one that escapes must not end the thread.
        error.discard_as_unraisable("edgecut.cloud._frontend dispatch");
      }
      group.clear();
      lane.clear();
      state = PyEval_SaveThread();
    }
    PyEval_RestoreThread(state);
    PyGILState_Release(gil);
  }

  // Move the plain ModelInfer calls of `group` to `lane`, read; the others stay. Runs
  // without the GIL.
  void take_lane_calls(std::vector<Received>* group,
                       std::vector<std::unique_ptr<LaneCall>>* lane) {
    if (infer_method_.empty()) return;
    size_t kept = 0;
    for (auto& item : *group) {
      if (item.method == infer_method_) {
        auto call = std::make_unique<LaneCall>();
        if (call->message->fill(&item.request)) {
          if (infer_wire::parse_plain_infer(call->message->view(), &call->request) &&
              !infer_excluded_.count(std::string(call->request.model_name))) {
            call->received = std::move(item);
            lane->push_back(std::move(call));
            ++lane_calls_;
            continue;
          }
          item.message = std::move(call->message);  // Python's full path reads this copy
        }
      }
      if (&(*group)[kept] != &item) (*group)[kept] = std::move(item);
      ++kept;
    }
    group->resize(kept);
  }

  // The lane calls as Python receives them: one tuple per group of calls that can share a
  // run (lane_key), in the order of each group's first call:
  // (model name, model version, peer or None, [(input name, datatype, shape)],
  //  [output names asked for], [(call id, request id, seconds left or None, message,
  //  (offset of each input's tensor in message), peer address or None)]). Names and ids
  //  are bytes; each message is a read-only buffer. The peer address comes only with a
  //  request id (to tell callers apart for deduplication without mutual TLS).
  py::list lane_groups(std::vector<std::unique_ptr<LaneCall>>& lane) {
    py::list out;
    if (lane.empty()) return out;
    std::vector<std::vector<LaneCall*>> groups;
    std::unordered_map<std::string, size_t> index;
    for (auto& call : lane) {
      auto [it, fresh] = index.try_emplace(lane_key(*call), groups.size());
      if (fresh) groups.emplace_back();
      groups[it->second].push_back(call.get());
    }
    for (const auto& members : groups) {
      const LaneCall& first = *members.front();
      const infer_wire::Request& request = first.request;
      py::list inputs, outputs, calls;
      for (const auto& input : request.inputs) {
        py::tuple shape(input.shape.size());
        for (size_t d = 0; d < input.shape.size(); ++d) shape[d] = py::int_(input.shape[d]);
        inputs.append(py::make_tuple(view_bytes(input.name), view_bytes(input.datatype), shape));
      }
      for (const auto& name : request.outputs) outputs.append(view_bytes(name));
      for (LaneCall* call : members) {
        const Received& received = call->received;
        py::object left = received.time_left_s ? py::object(py::float_(*received.time_left_s))
                                               : py::none();
        const char* start = call->message->data;
        py::tuple offsets(call->request.inputs.size());
        for (size_t j = 0; j < call->request.inputs.size(); ++j) {
          offsets[j] = py::int_(call->request.inputs[j].raw.data() - start);
        }
        py::bytes id = view_bytes(call->request.id);
        py::object message = py::cast(call->message.release(),
                                      py::return_value_policy::take_ownership);
        py::object address = call->request.id.empty() ? py::object(py::none())
                                                      : py::object(py::str(received.address));
        calls.append(py::make_tuple(received.id, id, left, message, offsets, address));
      }
      py::object peer = first.received.peer ? py::object(py::str(*first.received.peer))
                                            : py::none();
      out.append(py::make_tuple(view_bytes(request.model_name),
                                view_bytes(request.model_version), peer, inputs, outputs,
                                calls));
    }
    return out;
  }

  int port_ = 0;
  size_t max_open_calls_;
  int accept_depth_;
  bool started_ = false;
  std::atomic<bool> stopped_{false};
  grpc::AsyncGenericService service_;
  std::unique_ptr<grpc::ServerCompletionQueue> queue_;
  std::unique_ptr<grpc::Server> server_;
  std::thread poller_;
  std::thread dispatcher_;
  py::object dispatch_;
  std::string infer_method_;  // "" : no infer lane
  std::unordered_set<std::string> infer_excluded_;
  std::atomic<uint64_t> lane_calls_{0};
  std::atomic<uint64_t> refused_calls_{0};
  std::atomic<bool> yields_{true};
  uint64_t next_id_ = 1;  // only the poller thread (and start()) take ids

  std::mutex calls_mutex_;
  std::unordered_map<uint64_t, Call*> calls_;
  bool queue_closed_ = false;  // under calls_mutex_: stop() shut the completion queue down

  std::mutex received_mutex_;
  std::condition_variable received_ready_;
  std::deque<Received> received_;
  std::vector<uint64_t> ended_;  // calls that ended, with notify_done set
  bool closing_ = false;
};

}  // namespace

PYBIND11_MODULE(_frontend, module) {
  module.doc() = "gRPC transport in C++ for the edgecut endpoint (see edgecut.cloud.native_server)";
  // gRPC's mutexes are Abseil's, and Debian's Abseil is built with its deadlock detection on:
  // every lock of a gRPC mutex updated a lock graph (GraphCycles), 0.7 % of the endpoint's
  // CPU under load with 1.5 % in Abseil's mutexes in all (perf, small CNN, 32 clients).
  // A release build of Abseil ignores cycles; so does this process from here on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  py::class_<Payload>(module, "Payload", py::buffer_protocol())
      .def_buffer([](Payload& payload) {
        return py::buffer_info(payload.data, 1, py::format_descriptor<uint8_t>::format(),
                               1, {static_cast<py::ssize_t>(payload.size)}, {1},
                               /*readonly=*/true);
      });
  py::class_<Frontend>(module, "Frontend")
      .def(py::init<const std::string&, std::optional<std::string>, bool, bool, int, int, int,
                    int, bool, const std::vector<std::pair<std::string, int>>&>(),
           py::arg("address"), py::arg("tls_dir") = py::none(), py::arg("mutual") = false,
           py::arg("reload") = true, py::arg("max_message_bytes") = 64 << 20,
           py::arg("max_open_calls") = 1024, py::arg("accept_depth") = 64,
           py::arg("receive_window_bytes") = 0, py::arg("yield_to_models") = true,
           py::arg("channel_args") = std::vector<std::pair<std::string, int>>{})
      .def_property_readonly("port", &Frontend::port)
      .def("start", &Frontend::start, py::arg("dispatch"))
      .def("finish", &Frontend::finish, py::arg("call_id"), py::arg("code"), py::arg("details"),
           py::arg("payload") = py::none(),
           py::arg("trailing") = std::vector<std::pair<std::string, std::string>>{})
      .def("write", &Frontend::write, py::arg("call_id"), py::arg("payload"))
      .def("enable_infer_lane", &Frontend::enable_infer_lane, py::arg("method"),
           py::arg("excluded_models") = std::vector<std::string>{})
      .def("finish_infers", &Frontend::finish_infers, py::arg("call_ids"),
           py::arg("request_ids"), py::arg("rows"), py::arg("model_name"),
           py::arg("model_version"), py::arg("outputs"),
           py::arg("queue_ms") = std::vector<double>{},
           py::arg("compute_ms") = std::vector<double>{},
           py::arg("keep") = std::vector<bool>{})
      .def("cancelled", &Frontend::cancelled, py::arg("call_id"))
      .def("watch_done", &Frontend::watch_done, py::arg("call_id"))
      .def("open_calls", &Frontend::open_calls)
      .def_property_readonly("lane_calls", &Frontend::lane_calls)
      .def_property_readonly("refused_calls", &Frontend::refused_calls)
      .def("stop", &Frontend::stop, py::arg("grace_s") = 0.0);
}
