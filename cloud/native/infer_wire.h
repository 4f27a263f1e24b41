// The ModelInfer messages of the Open Inference Protocol, read and written in C++ for the
// endpoint's infer lane (see frontend.cc): only the plain form, which tritonclient and most
// clients send, with every tensor in raw_input_contents and no parameters anywhere.
//
// Anything else (typed contents, codec parameters, unknown fields, a malformed message) is
// not plain: parse_plain_infer says so and the call goes to Python's full path, which gives
// it its answer or its error. So this file never has to say what is wrong with a message.
//
// Field numbers are those of protocol/proto/grpc_service.proto.

#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace infer_wire {

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kDelimited = 2, kFixed32 = 5 };

// Bytes per element of a fixed-size KServe datatype; 0 for BYTES and unknown names.
inline size_t element_size(std::string_view datatype) {
  if (datatype == "FP32" || datatype == "INT32" || datatype == "UINT32") return 4;
  if (datatype == "FP16" || datatype == "BF16" || datatype == "INT16" || datatype == "UINT16")
    return 2;
  if (datatype == "FP64" || datatype == "INT64" || datatype == "UINT64") return 8;
  if (datatype == "UINT8" || datatype == "INT8" || datatype == "BOOL") return 1;
  return 0;
}

struct Input {
  std::string_view name;
  std::string_view datatype;
  std::vector<int64_t> shape;
  std::string_view raw;  // its entry of raw_input_contents
};

// A plain request, as views into the message it was read from.
struct Request {
  std::string_view model_name;
  std::string_view model_version;
  std::string_view id;
  std::vector<Input> inputs;
  std::vector<std::string_view> outputs;  // the outputs asked for by name, in order
};

class Reader {
 public:
  Reader(const char* data, size_t size)
      : at_(reinterpret_cast<const uint8_t*>(data)), end_(at_ + size) {}
  explicit Reader(std::string_view data) : Reader(data.data(), data.size()) {}

  bool done() const { return at_ == end_; }
  size_t left() const { return static_cast<size_t>(end_ - at_); }

  bool varint(uint64_t* value) {
    uint64_t result = 0;
    for (int shift = 0; shift < 64 && at_ < end_; shift += 7) {
      uint8_t byte = *at_++;
      result |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) {
        *value = result;
        return true;
      }
    }
    return false;
  }

  bool key(uint32_t* field, uint32_t* type) {
    uint64_t key = 0;
    if (!varint(&key) || (key >> 3) == 0 || (key >> 3) > UINT32_MAX) return false;
    *field = static_cast<uint32_t>(key >> 3);
    *type = static_cast<uint32_t>(key & 7);
    return true;
  }

  bool delimited(std::string_view* value) {
    uint64_t size = 0;
    if (!varint(&size) || size > static_cast<uint64_t>(end_ - at_)) return false;
    *value = std::string_view(reinterpret_cast<const char*>(at_), static_cast<size_t>(size));
    at_ += size;
    return true;
  }

 private:
  const uint8_t* at_;
  const uint8_t* end_;
};

// InferInputTensor with name, datatype and shape only (packed or not, as protobuf accepts).
inline bool parse_input(std::string_view data, Input* input) {
  Reader reader(data);
  while (!reader.done()) {
    uint32_t field = 0, type = 0;
    if (!reader.key(&field, &type)) return false;
    if (type == kDelimited && (field == 1 || field == 2)) {
      if (!reader.delimited(field == 1 ? &input->name : &input->datatype)) return false;
    } else if (field == 3 && type == kDelimited) {
      std::string_view packed;
      if (!reader.delimited(&packed)) return false;
      Reader dims(packed);
      while (!dims.done()) {
        uint64_t dim = 0;
        if (!dims.varint(&dim)) return false;
        input->shape.push_back(static_cast<int64_t>(dim));
      }
    } else if (field == 3 && type == kVarint) {
      uint64_t dim = 0;
      if (!reader.varint(&dim)) return false;
      input->shape.push_back(static_cast<int64_t>(dim));
    } else {
      return false;  // parameters, typed contents or a field this lane does not know
    }
  }
  return true;
}

// Whether `data` is a plain ModelInferRequest; fills `request` when it is. Plain also means
// consistent: one raw entry per input, of exactly the bytes its shape and datatype make, and
// every input with the same first dimension (its rows), so requests can be joined in batches.
inline bool parse_plain_infer(std::string_view data, Request* request) {
  Reader reader(data);
  std::vector<std::string_view> raw;
  while (!reader.done()) {
    uint32_t field = 0, type = 0;
    std::string_view value;
    if (!reader.key(&field, &type) || type != kDelimited || !reader.delimited(&value)) {
      return false;
    }
    switch (field) {
      case 1: request->model_name = value; break;
      case 2: request->model_version = value; break;
      case 3: request->id = value; break;
      case 5: {
        Input input;
        if (!parse_input(value, &input)) return false;
        request->inputs.push_back(std::move(input));
        break;
      }
      case 6: {  // InferRequestedOutputTensor: a name and nothing else
        Reader output(value);
        std::string_view name;
        uint32_t inner = 0, inner_type = 0;
        if (!output.done() &&
            (!output.key(&inner, &inner_type) || inner != 1 || inner_type != kDelimited ||
             !output.delimited(&name) || !output.done())) {
          return false;
        }
        request->outputs.push_back(name);
        break;
      }
      case 7: raw.push_back(value); break;
      default: return false;  // parameters (4) or an unknown field
    }
  }
  if (request->inputs.empty() || raw.size() != request->inputs.size()) return false;
  for (size_t i = 0; i < raw.size(); ++i) {
    Input& input = request->inputs[i];
    size_t bytes = element_size(input.datatype);
    if (bytes == 0 || input.shape.empty() || input.name.empty()) return false;
    for (int64_t dim : input.shape) {
      if (dim < 0 || dim > (int64_t{1} << 40)) return false;
      bytes *= static_cast<size_t>(dim);
      if (bytes > raw[i].size()) return false;
    }
    if (bytes != raw[i].size()) return false;
    if (i > 0 && input.shape[0] != request->inputs[0].shape[0]) return false;
    input.raw = raw[i];
  }
  return true;
}

// Where the first raw_input_contents entry's bytes start in a ModelInferRequest, from its
// first bytes `head` (a serializer writes the tensors last, after a short header); nothing
// when `head` ends before them or is no such message.
inline std::optional<size_t> first_raw_offset(std::string_view head) {
  Reader reader(head);
  while (!reader.done()) {
    uint32_t field = 0, type = 0;
    if (!reader.key(&field, &type) || type != kDelimited) return std::nullopt;
    if (field == 7) {
      uint64_t size = 0;
      if (!reader.varint(&size)) return std::nullopt;
      return head.size() - reader.left();
    }
    std::string_view skipped;
    if (!reader.delimited(&skipped)) return std::nullopt;
  }
  return std::nullopt;
}

class Writer {
 public:
  void varint(uint64_t value) {
    while (value >= 0x80) {
      out_.push_back(static_cast<char>((value & 0x7f) | 0x80));
      value >>= 7;
    }
    out_.push_back(static_cast<char>(value));
  }
  void key(uint32_t field, uint32_t type) { varint((uint64_t{field} << 3) | type); }
  void bytes(uint32_t field, std::string_view value) {
    key(field, kDelimited);
    varint(value.size());
    out_.append(value.data(), value.size());
  }
  std::string& out() { return out_; }
  const std::string& out() const { return out_; }

 private:
  std::string out_;
};

inline size_t varint_size(uint64_t value) {
  size_t size = 1;
  while (value >= 0x80) {
    value >>= 7;
    ++size;
  }
  return size;
}

struct Output {
  std::string_view name;
  std::string_view datatype;
  std::vector<int64_t> shape;
  std::string_view raw;
};

// A double response parameter: an entry of ModelInferResponse.parameters (field 4, a map
// of string to InferParameter) holding double_param (field 4 of InferParameter).
struct DoubleParameter {
  std::string_view name;
  double value;
};

// A ModelInferResponse as the Python path writes it for raw outputs, written into `out`,
// which must hold response_size() bytes. The tensors' bytes go at the end, copied once.
class Response {
 public:
  Response(std::string_view model_name, std::string_view model_version, std::string_view id,
           const std::vector<Output>& outputs,
           const std::vector<DoubleParameter>& parameters = {})
      : outputs_(outputs) {
    if (!model_name.empty()) head_.bytes(1, model_name);
    if (!model_version.empty()) head_.bytes(2, model_version);
    if (!id.empty()) head_.bytes(3, id);
    for (const DoubleParameter& parameter : parameters) {
      Writer value;  // InferParameter { double double_param = 4; }
      value.key(4, kFixed64);
      uint64_t bits = 0;
      static_assert(sizeof(bits) == sizeof(parameter.value), "double is 64 bits");
      std::memcpy(&bits, &parameter.value, sizeof(bits));
      for (int i = 0; i < 8; ++i) value.out().push_back(static_cast<char>(bits >> (8 * i)));
      Writer entry;  // the map entry: key = 1, value = 2
      entry.bytes(1, parameter.name);
      entry.bytes(2, value.out());
      head_.bytes(4, entry.out());
    }
    for (const Output& output : outputs) {
      Writer tensor;
      tensor.bytes(1, output.name);
      tensor.bytes(2, output.datatype);
      if (!output.shape.empty()) {
        Writer dims;
        for (int64_t dim : output.shape) dims.varint(static_cast<uint64_t>(dim));
        tensor.bytes(3, dims.out());
      }
      head_.bytes(5, tensor.out());
    }
    size_ = head_.out().size();
    for (const Output& output : outputs) {
      size_ += 1 + varint_size(output.raw.size()) + output.raw.size();
    }
  }

  size_t size() const { return size_; }

  void write(char* out) const {
    std::memcpy(out, head_.out().data(), head_.out().size());
    out += head_.out().size();
    for (const Output& output : outputs_) {
      Writer field;
      field.key(6, kDelimited);
      field.varint(output.raw.size());
      std::memcpy(out, field.out().data(), field.out().size());
      out += field.out().size();
      std::memcpy(out, output.raw.data(), output.raw.size());
      out += output.raw.size();
    }
  }

 private:
  const std::vector<Output>& outputs_;
  Writer head_;
  size_t size_ = 0;
};

}  // namespace infer_wire
