// Writer for Megatron's indexed dataset format (.bin + .idx), the layout that
// megatron.core.datasets.indexed_dataset.IndexedDataset reads (docs/megatron_core.md).
//
// Why C++: megatron-core's Python IndexedDatasetBuilder converts every item through numpy and
// torch and computes the byte pointers in a Python loop at finalize time; preprocessing a
// speech corpus means millions of short segment sequences, so that per-item cost dominates.
// This builder takes whole documents (or batches of documents) as flat arrays, narrows them to
// the on-disk dtype with a range check, and streams them through one large write buffer.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

constexpr char kIndexMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr uint64_t kIndexVersion = 1;
constexpr size_t kWriteBufferBytes = 8u << 20;

// Megatron's dtype codes (indexed_dataset.DType); only the token dtypes megatron writes.
enum class TokenDtype : uint8_t { kInt32 = 4, kUint16 = 8 };

using IdArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using ModeArray = py::array_t<int8_t, py::array::c_style | py::array::forcecast>;

class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(const std::string& bin_path, uint8_t dtype_code, bool multimodal)
      : bin_path_(bin_path), multimodal_(multimodal) {
    if (dtype_code != static_cast<uint8_t>(TokenDtype::kInt32) &&
        dtype_code != static_cast<uint8_t>(TokenDtype::kUint16)) {
      throw py::value_error("dtype_code must be 4 (int32) or 8 (uint16), got " +
                            std::to_string(dtype_code));
    }
    dtype_ = static_cast<TokenDtype>(dtype_code);
    item_size_ = dtype_ == TokenDtype::kInt32 ? 4 : 2;
    bin_file_ = std::fopen(bin_path.c_str(), "wb");
    if (bin_file_ == nullptr) throw py::value_error("cannot open for writing: " + bin_path);
    buffer_.reserve(kWriteBufferBytes);
    document_indices_.push_back(0);
  }

  ~IndexedDatasetWriter() {
    if (bin_file_ != nullptr) std::fclose(bin_file_);
  }

  // One document: `ids` holds its sequences back to back, `lengths` their sizes.
  void add_document(const IdArray& ids, const IdArray& lengths, std::optional<ModeArray> modes) {
    const int64_t num_sequences = lengths.size();
    IdArray counts(1);
    counts.mutable_data()[0] = num_sequences;
    add_documents(ids, lengths, modes, counts);
  }

  // Many documents at once: `sequences_per_document[d]` sequences of `lengths` belong to d.
  void add_documents(const IdArray& ids, const IdArray& lengths, std::optional<ModeArray> modes,
                     const IdArray& sequences_per_document) {
    ensure_open();
    const int64_t* length_data = lengths.data();
    const int64_t num_sequences = lengths.size();
    if (multimodal_ != modes.has_value()) {
      throw py::value_error(multimodal_ ? "a multimodal dataset needs modes for every sequence"
                                        : "modes given to a dataset that is not multimodal");
    }
    if (modes && modes->size() != num_sequences) {
      throw py::value_error("modes and lengths differ in size");
    }
    int64_t total = 0;
    for (int64_t i = 0; i < num_sequences; ++i) {
      if (length_data[i] < 0 || length_data[i] > std::numeric_limits<int32_t>::max()) {
        throw py::value_error("sequence length out of range: " + std::to_string(length_data[i]));
      }
      total += length_data[i];
    }
    if (total != ids.size()) {
      throw py::value_error("lengths sum to " + std::to_string(total) + " but " +
                            std::to_string(ids.size()) + " ids were given");
    }
    const int64_t* counts = sequences_per_document.data();
    int64_t counted = 0;
    for (int64_t d = 0; d < sequences_per_document.size(); ++d) {
      if (counts[d] < 0) throw py::value_error("negative sequence count for a document");
      counted += counts[d];
    }
    if (counted != num_sequences) {
      throw py::value_error("sequences_per_document does not add up to the number of lengths");
    }
    check_range(ids.data(), ids.size());
    {
      py::gil_scoped_release release;
      write_ids(ids.data(), ids.size());
    }
    for (int64_t i = 0; i < num_sequences; ++i) {
      sequence_lengths_.push_back(static_cast<int32_t>(length_data[i]));
    }
    if (modes) {
      const int8_t* mode_data = modes->data();
      sequence_modes_.insert(sequence_modes_.end(), mode_data, mode_data + num_sequences);
    }
    int64_t sequence_index = static_cast<int64_t>(sequence_lengths_.size()) - num_sequences;
    for (int64_t d = 0; d < sequences_per_document.size(); ++d) {
      sequence_index += counts[d];
      document_indices_.push_back(sequence_index);
    }
  }

  // Flush the data file and write the index; the writer cannot be used afterwards.
  void finalize(const std::string& idx_path) {
    ensure_open();
    flush();
    if (std::fclose(bin_file_) != 0) {
      bin_file_ = nullptr;
      throw py::value_error("error closing " + bin_path_);
    }
    bin_file_ = nullptr;
    std::FILE* idx_file = std::fopen(idx_path.c_str(), "wb");
    if (idx_file == nullptr) throw py::value_error("cannot open for writing: " + idx_path);
    const uint64_t sequence_count = sequence_lengths_.size();
    const uint64_t document_count = document_indices_.size();
    std::vector<int64_t> pointers(sequence_count);
    int64_t pointer = 0;
    for (uint64_t i = 0; i < sequence_count; ++i) {
      pointers[i] = pointer;
      pointer += static_cast<int64_t>(sequence_lengths_[i]) * item_size_;
    }
    const uint8_t code = static_cast<uint8_t>(dtype_);
    bool ok = std::fwrite(kIndexMagic, 1, sizeof(kIndexMagic), idx_file) == sizeof(kIndexMagic);
    ok = ok && std::fwrite(&kIndexVersion, 8, 1, idx_file) == 1;
    ok = ok && std::fwrite(&code, 1, 1, idx_file) == 1;
    ok = ok && std::fwrite(&sequence_count, 8, 1, idx_file) == 1;
    ok = ok && std::fwrite(&document_count, 8, 1, idx_file) == 1;
    ok = ok && std::fwrite(sequence_lengths_.data(), 4, sequence_count, idx_file) == sequence_count;
    ok = ok && std::fwrite(pointers.data(), 8, sequence_count, idx_file) == sequence_count;
    ok = ok && std::fwrite(document_indices_.data(), 8, document_count, idx_file) == document_count;
    if (multimodal_) {
      ok = ok && std::fwrite(sequence_modes_.data(), 1, sequence_count, idx_file) == sequence_count;
    }
    ok = (std::fclose(idx_file) == 0) && ok;
    if (!ok) throw py::value_error("error writing " + idx_path);
  }

  int64_t num_sequences() const { return static_cast<int64_t>(sequence_lengths_.size()); }
  int64_t num_documents() const { return static_cast<int64_t>(document_indices_.size()) - 1; }

 private:
  void ensure_open() const {
    if (bin_file_ == nullptr) throw py::value_error("the writer is already finalized");
  }

  void check_range(const int64_t* ids, int64_t count) const {
    const int64_t upper = dtype_ == TokenDtype::kInt32 ? std::numeric_limits<int32_t>::max()
                                                       : std::numeric_limits<uint16_t>::max();
    for (int64_t i = 0; i < count; ++i) {
      if (ids[i] < 0 || ids[i] > upper) {
        throw py::value_error("id " + std::to_string(ids[i]) + " does not fit the dataset dtype");
      }
    }
  }

  template <typename T>
  void append_as(const int64_t* ids, int64_t count) {
    const size_t start = buffer_.size();
    buffer_.resize(start + count * sizeof(T));
    T* out = reinterpret_cast<T*>(buffer_.data() + start);
    for (int64_t i = 0; i < count; ++i) out[i] = static_cast<T>(ids[i]);
  }

  void write_ids(const int64_t* ids, int64_t count) {
    const int64_t chunk = static_cast<int64_t>(kWriteBufferBytes / item_size_);
    for (int64_t done = 0; done < count; done += chunk) {
      const int64_t n = std::min(chunk, count - done);
      if (dtype_ == TokenDtype::kInt32) {
        append_as<int32_t>(ids + done, n);
      } else {
        append_as<uint16_t>(ids + done, n);
      }
      if (buffer_.size() >= kWriteBufferBytes) flush();
    }
  }

  void flush() {
    if (buffer_.empty()) return;
    if (std::fwrite(buffer_.data(), 1, buffer_.size(), bin_file_) != buffer_.size()) {
      throw std::runtime_error("error writing " + bin_path_);
    }
    buffer_.clear();
  }

  std::string bin_path_;
  bool multimodal_;
  TokenDtype dtype_;
  int64_t item_size_;
  std::FILE* bin_file_ = nullptr;
  std::vector<char> buffer_;
  std::vector<int32_t> sequence_lengths_;
  std::vector<int8_t> sequence_modes_;
  std::vector<int64_t> document_indices_;
};

}  // namespace

PYBIND11_MODULE(_indexed_builder, m) {
  m.doc() = "Fast writer for Megatron indexed datasets (.bin/.idx).";
  py::class_<IndexedDatasetWriter>(m, "IndexedDatasetWriter")
      .def(py::init<const std::string&, uint8_t, bool>(), py::arg("bin_path"),
           py::arg("dtype_code"), py::arg("multimodal") = false)
      .def("add_document", &IndexedDatasetWriter::add_document, py::arg("ids"),
           py::arg("lengths"), py::arg("modes") = py::none(),
           "Append one document: its sequences' ids back to back and their lengths.")
      .def("add_documents", &IndexedDatasetWriter::add_documents, py::arg("ids"),
           py::arg("lengths"), py::arg("modes"), py::arg("sequences_per_document"),
           "Append many documents from flat arrays (the batch a preprocessing worker returns).")
      .def("finalize", &IndexedDatasetWriter::finalize, py::arg("idx_path"))
      .def_property_readonly("num_sequences", &IndexedDatasetWriter::num_sequences)
      .def_property_readonly("num_documents", &IndexedDatasetWriter::num_documents);
}
