// Patch-boundary kernel for the Latent Speech-Text Transformer (docs/method.md §2-3).
//
// Input: a batch of token rows [B, N] with per-token metadata (is_speech, segment_ids,
// is_silence, document_ids; the schema of megatron_lst/patching/strategies.py). Output: patch
// lengths and patch start indices per row, right-padded to the widest row. Only speech spans
// are patched; every other token (text, BOS, EOS, PAD, markers) is a patch of length 1. A speech
// span is a maximal run of speech units inside one document, so no patch crosses a modality or
// a document boundary.
//
// Causal boundaries (Options::causal, docs/method.md §2 "Patch boundaries"): the paper's rule closes
// a span's short last static patch because the *next* token is not a unit, so the prediction of
// that next token already sees the closed patch. Under the causal rule such an open patch (and a
// folded <s> that no unit followed) takes the non-speech token that ends it as its last token, so
// every boundary is decided by the patch's own tokens: p units, or a non-speech token.
//
// The readable oracle of every rule below is megatron_lst/patching/reference.py; the property
// tests hold this file to it. Work happens with the GIL released.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

enum Strategy : int { kStatic = 0, kAligned = 1, kMixed = 2, kCurriculum = 3 };
enum SilenceMode : int { kSilenceSeparate = 0, kSilenceMerged = 1 };
enum FoldMode : int { kFoldNever = 0, kFoldStatic = 1, kFoldAlways = 2 };

// The ids of the joint vocabulary the kernel needs (megatron_lst/tokenizer.py VocabLayout).
struct Vocab {
  int64_t bos_id;
  int64_t speech_marker_id;
  int64_t unit_offset;
  int64_t vocab_size;
};

struct Options {
  int strategy;
  int64_t patch_size;
  int silence_mode;
  int64_t max_patch_length;  // 0: no cap
  int fold_speech_marker;  // kFoldNever, kFoldStatic (rows patched static only) or kFoldAlways
  bool causal;  // boundaries never depend on the token after the patch
  double tau1;
  double tau2;
  double mixed_aligned_probability;
  uint64_t seed;
  int64_t step;
};

// One row of the batch, as raw pointers (valid while the numpy arrays are alive).
struct Row {
  int64_t index;
  int64_t length;
  const int64_t* tokens;
  const bool* is_speech;
  const int32_t* segment_ids;
  const bool* is_silence;
  const int32_t* document_ids;
};

[[noreturn]] void fail(const Row& row, int64_t position, const std::string& what) {
  std::ostringstream message;
  message << "patching: row " << row.index << ", position " << position << ": " << what;
  throw std::invalid_argument(message.str());
}

void validate_options(const Options& options) {
  if (options.strategy < kStatic || options.strategy > kCurriculum)
    throw std::invalid_argument("patching: unknown strategy code " + std::to_string(options.strategy));
  if (options.patch_size < 1)
    throw std::invalid_argument("patching: patch_size must be >= 1, got " + std::to_string(options.patch_size));
  if (options.silence_mode != kSilenceSeparate && options.silence_mode != kSilenceMerged)
    throw std::invalid_argument("patching: unknown silence mode code " + std::to_string(options.silence_mode));
  if (options.fold_speech_marker < kFoldNever || options.fold_speech_marker > kFoldAlways)
    throw std::invalid_argument("patching: unknown marker fold code " + std::to_string(options.fold_speech_marker));
  if (options.max_patch_length < 0)
    throw std::invalid_argument("patching: max_patch_length must be >= 0 (0 = no cap)");
  if (options.tau1 > options.tau2)
    throw std::invalid_argument("patching: curriculum needs tau1 <= tau2");
  if (!(options.mixed_aligned_probability >= 0.0 && options.mixed_aligned_probability <= 1.0))
    throw std::invalid_argument("patching: mixed_aligned_probability must lie in [0, 1]");
}

// Counter-based hash (splitmix64 finaliser): a reproducible draw from (seed, step, sample) with
// no generator state to save, so a resumed run makes the same choices.
uint64_t splitmix64(uint64_t value) {
  value += 0x9E3779B97F4A7C15ULL;
  value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9ULL;
  value = (value ^ (value >> 27)) * 0x94D049BB133111EBULL;
  return value ^ (value >> 31);
}

double uniform_draw(uint64_t seed, int64_t step, int64_t sample_id) {
  uint64_t key = splitmix64(splitmix64(splitmix64(seed) ^ static_cast<uint64_t>(step)) ^
                            static_cast<uint64_t>(sample_id));
  return static_cast<double>(key >> 11) * 0x1.0p-53;
}

double aligned_probability(const Options& options) {
  switch (options.strategy) {
    case kStatic:
      return 0.0;
    case kAligned:
      return 1.0;
    case kMixed:
      return options.mixed_aligned_probability;
    default: {
      double step = static_cast<double>(options.step);
      if (step < options.tau1) return 1.0;
      if (step >= options.tau2) return 0.0;
      return 1.0 - (step - options.tau1) / (options.tau2 - options.tau1);
    }
  }
}

bool choose_aligned(const Options& options, int64_t sample_id) {
  if (options.strategy == kStatic) return false;
  if (options.strategy == kAligned) return true;
  return uniform_draw(options.seed, options.step, sample_id) < aligned_probability(options);
}

// Checks the metadata schema of one row; every error names the row and position.
void validate_row(const Row& row, const Vocab& vocab, bool has_segments) {
  if (row.length < 1 || row.tokens[0] != vocab.bos_id)
    fail(row, 0, "a sample must start with BOS (id " + std::to_string(vocab.bos_id) + ")");
  int64_t last_segment = -1;
  for (int64_t i = 0; i < row.length; ++i) {
    int64_t token = row.tokens[i];
    bool unit_id = token >= vocab.unit_offset && token < vocab.vocab_size;
    if (token < 0 || token >= vocab.vocab_size)
      fail(row, i, "token id " + std::to_string(token) + " is outside the joint vocabulary [0, " +
                       std::to_string(vocab.vocab_size) + ")");
    if (row.is_speech[i] && !unit_id)
      fail(row, i, "unit id out of range: is_speech is set on token " + std::to_string(token) +
                       ", which is not a speech unit id in [" + std::to_string(vocab.unit_offset) + ", " +
                       std::to_string(vocab.vocab_size) + ")");
    if (!row.is_speech[i] && unit_id)
      fail(row, i, "token " + std::to_string(token) + " is a speech unit id but is_speech is False");
    if (!has_segments) continue;
    int64_t segment = row.segment_ids[i];
    if (!row.is_speech[i]) {
      if (segment != -1) fail(row, i, "non-speech token has segment id " + std::to_string(segment) + " (expected -1)");
      if (row.is_silence[i]) fail(row, i, "is_silence is set on a non-speech token");
      continue;
    }
    if (segment < 0) fail(row, i, "speech unit has no segment id (got " + std::to_string(segment) + ")");
    bool continues_span = i > 0 && row.is_speech[i - 1] && row.document_ids[i - 1] == row.document_ids[i];
    if (segment < last_segment)
      fail(row, i, "segment ids decrease (" + std::to_string(last_segment) + " -> " + std::to_string(segment) +
                       "): alignment spans overlap");
    if (segment == last_segment && !continues_span)
      fail(row, i, "segment " + std::to_string(segment) +
                       " resumes after a non-speech token or a document boundary (segments must be contiguous)");
    if (segment == last_segment && row.is_silence[i] != row.is_silence[i - 1])
      fail(row, i, "is_silence changes inside segment " + std::to_string(segment));
    last_segment = segment;
  }
}

// Appends one patch, split into pieces of at most `cap` tokens when a cap is set.
void append_capped(std::vector<int64_t>& lengths, int64_t length, int64_t cap) {
  if (cap > 0) {
    while (length > cap) {
      lengths.push_back(cap);
      length -= cap;
    }
  }
  lengths.push_back(length);
}

// Static patching of the speech span [begin, end): runs of patch_size, shorter remainder last.
// Under the causal rule a shorter remainder is not emitted but returned (its length, marker
// included): it stays open for the token after the span. Returns 0 when nothing is left open.
int64_t patch_span_static(int64_t begin, int64_t end, int64_t marker, const Options& options,
                          std::vector<int64_t>& lengths) {
  for (int64_t position = begin; position < end;) {
    int64_t size = std::min(options.patch_size, end - position);
    if (options.causal && size < options.patch_size) return size + marker;
    append_capped(lengths, size + marker, options.max_patch_length);
    marker = 0;
    position += size;
  }
  return 0;
}

// Aligned patching of the speech span [begin, end): one patch per segment (sil_sep), or each
// silence joined to the word before it in the span (to the word after it when the span opens
// with silence; a span of silence only is one patch) for sil_merged.
void patch_span_aligned(const Row& row, int64_t begin, int64_t end, int64_t marker, const Options& options,
                        std::vector<int64_t>& lengths) {
  int64_t pending = 0;
  bool pending_has_word = false;
  auto emit = [&](int64_t length) {
    append_capped(lengths, length + marker, options.max_patch_length);
    marker = 0;
  };
  for (int64_t position = begin; position < end;) {
    int64_t segment_end = position + 1;
    while (segment_end < end && row.segment_ids[segment_end] == row.segment_ids[position]) ++segment_end;
    int64_t size = segment_end - position;
    bool silence = row.is_silence[position];
    if (options.silence_mode == kSilenceSeparate) {
      emit(size);
    } else if (silence) {
      pending += size;
    } else {
      if (pending_has_word) {
        emit(pending);
        pending = 0;
      }
      pending += size;
      pending_has_word = true;
    }
    position = segment_end;
  }
  if (pending > 0) emit(pending);
}

void patch_row(const Row& row, const Vocab& vocab, const Options& options, bool aligned,
               std::vector<int64_t>& lengths) {
  lengths.clear();
  int64_t marker = 0;
  int64_t open = 0;  // causal rule: tokens of a patch waiting for the non-speech token that ends it
  for (int64_t i = 0; i < row.length;) {
    if (open > 0) {
      bool joins = !row.is_speech[i] && row.document_ids[i] == row.document_ids[i - 1];
      append_capped(lengths, open + (joins ? 1 : 0), options.max_patch_length);
      open = 0;
      if (joins) {
        ++i;
        continue;
      }
    }
    if (!row.is_speech[i]) {
      bool folds = options.fold_speech_marker == kFoldAlways || (options.fold_speech_marker == kFoldStatic && !aligned);
      bool is_marker = folds && row.tokens[i] == vocab.speech_marker_id;
      bool fold = is_marker && i + 1 < row.length && row.is_speech[i + 1] &&
                  row.document_ids[i + 1] == row.document_ids[i];
      if (fold)
        marker = 1;
      else if (is_marker && options.causal)
        open = 1;  // whether units follow is not known yet: <s> waits like an open patch
      else
        lengths.push_back(1);
      ++i;
      continue;
    }
    int64_t end = i + 1;
    while (end < row.length && row.is_speech[end] && row.document_ids[end] == row.document_ids[i]) ++end;
    if (aligned)
      patch_span_aligned(row, i, end, marker, options, lengths);
    else
      open = patch_span_static(i, end, marker, options, lengths);
    marker = 0;
    i = end;
  }
  if (open > 0) append_capped(lengths, open, options.max_patch_length);
}

template <typename T>
py::array_t<T, py::array::c_style | py::array::forcecast> as_batch(const py::array& array, const char* name,
                                                                 int64_t rows, int64_t columns) {
  auto typed = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(array);
  if (!typed) throw std::invalid_argument(std::string("patching: cannot read ") + name + " as the expected dtype");
  if (typed.ndim() != 2 || typed.shape(0) != rows || typed.shape(1) != columns) {
    std::ostringstream message;
    message << "patching: " << name << " must have shape [" << rows << ", " << columns << "]";
    throw std::invalid_argument(message.str());
  }
  return typed;
}

Options make_options(int strategy, int64_t patch_size, int silence_mode, int64_t max_patch_length,
                     int fold_speech_marker, double tau1, double tau2, double mixed_aligned_probability,
                     uint64_t seed, int64_t step, bool causal = false) {
  Options options{strategy, patch_size, silence_mode, max_patch_length, fold_speech_marker, causal,
                  tau1, tau2, mixed_aligned_probability, seed, step};
  validate_options(options);
  return options;
}

py::tuple patch_batch(py::array tokens_in, py::array is_speech_in, py::array segment_ids_in, py::array is_silence_in,
                      py::array document_ids_in, py::array sample_ids_in, bool has_segments, int64_t bos_id,
                      int64_t speech_marker_id, int64_t unit_offset, int64_t vocab_size, int strategy,
                      int64_t patch_size, int silence_mode, int64_t max_patch_length, int fold_speech_marker,
                      double tau1, double tau2, double mixed_aligned_probability, uint64_t seed, int64_t step,
                      int64_t max_num_patches, bool causal) {
  Options options = make_options(strategy, patch_size, silence_mode, max_patch_length, fold_speech_marker, tau1,
                                 tau2, mixed_aligned_probability, seed, step, causal);
  Vocab vocab{bos_id, speech_marker_id, unit_offset, vocab_size};
  auto tokens = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(tokens_in);
  if (!tokens || tokens.ndim() != 2) throw std::invalid_argument("patching: tokens must be an int64 array [B, N]");
  const int64_t batch = tokens.shape(0), columns = tokens.shape(1);
  auto is_speech = as_batch<bool>(is_speech_in, "is_speech", batch, columns);
  auto segment_ids = as_batch<int32_t>(segment_ids_in, "segment_ids", batch, columns);
  auto is_silence = as_batch<bool>(is_silence_in, "is_silence", batch, columns);
  auto document_ids = as_batch<int32_t>(document_ids_in, "document_ids", batch, columns);
  auto sample_ids = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(sample_ids_in);
  if (!sample_ids || sample_ids.ndim() != 1 || sample_ids.shape(0) != batch)
    throw std::invalid_argument("patching: sample_ids must be an int64 array [B]");

  std::vector<std::vector<int64_t>> row_lengths(batch);
  std::vector<uint8_t> aligned_rows(batch);
  int64_t width = 0;
  {
    py::gil_scoped_release release;
    for (int64_t b = 0; b < batch; ++b) {
      Row row{b, columns, tokens.data() + b * columns, is_speech.data() + b * columns,
              segment_ids.data() + b * columns, is_silence.data() + b * columns, document_ids.data() + b * columns};
      validate_row(row, vocab, has_segments);
      bool aligned = choose_aligned(options, sample_ids.data()[b]);
      if (aligned && !has_segments)
        throw std::invalid_argument("patching: row " + std::to_string(b) +
                                    " is patched aligned but no segment_ids were given");
      aligned_rows[b] = aligned;
      row_lengths[b].reserve(columns / 2 + 1);
      patch_row(row, vocab, options, aligned, row_lengths[b]);
      width = std::max<int64_t>(width, static_cast<int64_t>(row_lengths[b].size()));
    }
  }
  if (max_num_patches >= 0) {
    if (width > max_num_patches)
      throw std::invalid_argument("patching: a row has " + std::to_string(width) +
                                  " patches, more than max_num_patches=" + std::to_string(max_num_patches));
    width = max_num_patches;
  }
  py::array_t<int64_t> patch_lengths({batch, width});
  py::array_t<int64_t> patch_starts({batch, width});
  py::array_t<int64_t> num_patches(batch);
  py::array_t<bool> aligned_out(batch);
  {
    int64_t* lengths_out = patch_lengths.mutable_data();
    int64_t* starts_out = patch_starts.mutable_data();
    int64_t* counts_out = num_patches.mutable_data();
    bool* aligned_flags = aligned_out.mutable_data();
    py::gil_scoped_release release;
    for (int64_t b = 0; b < batch; ++b) {
      const auto& lengths = row_lengths[b];
      int64_t start = 0, k = 0;
      for (; k < static_cast<int64_t>(lengths.size()); ++k) {
        lengths_out[b * width + k] = lengths[k];
        starts_out[b * width + k] = start;
        start += lengths[k];
      }
      for (; k < width; ++k) {
        lengths_out[b * width + k] = 0;
        starts_out[b * width + k] = start;
      }
      counts_out[b] = static_cast<int64_t>(lengths.size());
      aligned_flags[b] = aligned_rows[b] != 0;
    }
  }
  return py::make_tuple(patch_lengths, patch_starts, num_patches, aligned_out);
}

py::array_t<bool> choose_aligned_rows(py::array sample_ids_in, int strategy, double tau1, double tau2,
                                      double mixed_aligned_probability, uint64_t seed, int64_t step) {
  Options options = make_options(strategy, 1, kSilenceSeparate, 0, false, tau1, tau2, mixed_aligned_probability,
                                 seed, step);
  auto sample_ids = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(sample_ids_in);
  if (!sample_ids || sample_ids.ndim() != 1) throw std::invalid_argument("patching: sample_ids must be 1-D");
  py::array_t<bool> chosen(sample_ids.shape(0));
  bool* chosen_flags = chosen.mutable_data();
  for (py::ssize_t i = 0; i < sample_ids.shape(0); ++i) chosen_flags[i] = choose_aligned(options, sample_ids.data()[i]);
  return chosen;
}

double aligned_probability_at(int strategy, double tau1, double tau2, double mixed_aligned_probability,
                              int64_t step) {
  return aligned_probability(
      make_options(strategy, 1, kSilenceSeparate, 0, false, tau1, tau2, mixed_aligned_probability, 0, step));
}

}  // namespace

PYBIND11_MODULE(_patching, module) {
  module.doc() = "LST patch-boundary kernel (static / aligned / mixed / curriculum); see megatron_lst.patching";
  module.def("patch_batch", &patch_batch, "Patch lengths, starts, counts and aligned flags for a batch [B, N]",
             py::arg("tokens"), py::arg("is_speech"), py::arg("segment_ids"), py::arg("is_silence"),
             py::arg("document_ids"), py::arg("sample_ids"), py::arg("has_segments"), py::arg("bos_id"),
             py::arg("speech_marker_id"), py::arg("unit_offset"), py::arg("vocab_size"), py::arg("strategy"),
             py::arg("patch_size"), py::arg("silence_mode"), py::arg("max_patch_length"),
             py::arg("fold_speech_marker"), py::arg("tau1"), py::arg("tau2"), py::arg("mixed_aligned_probability"),
             py::arg("seed"), py::arg("step"), py::arg("max_num_patches"), py::arg("causal") = false);
  module.def("choose_aligned_rows", &choose_aligned_rows, "Per-sample aligned/static choice",
             py::arg("sample_ids"), py::arg("strategy"), py::arg("tau1"), py::arg("tau2"),
             py::arg("mixed_aligned_probability"), py::arg("seed"), py::arg("step"));
  module.def("aligned_probability", &aligned_probability_at, "Probability of aligned patching at a step",
             py::arg("strategy"), py::arg("tau1"), py::arg("tau2"), py::arg("mixed_aligned_probability"),
             py::arg("step"));
}
