// Text for dmoe's language models: reading a text file or the King James Version, the split into
// training and held-out bytes, the windows a model trains and is evaluated on, and bits per byte.
//
// Text is bytes. Nothing here checks for UTF-8: the byte tokenizer (data/byte_tokenizer.h) gives
// every byte its own token, so a file that is not valid UTF-8 trains as well as one that is, and
// only the decoding of generated text for a person replaces ill-formed bytes (Utf8StreamDecoder).
//
// Torch-free. The readers block the calling thread (disk, and for the KJV one child process); the
// rest is pure computation. A TextCorpus is immutable after Create: any number of threads may read
// it at once.
#ifndef DMOE_DATA_TEXT_CORPUS_H_
#define DMOE_DATA_TEXT_CORPUS_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/status.h"
#include "data/byte_tokenizer.h"
#include "data/data_source.h"

namespace dmoe::data {

// The largest text file read by default (--data text:FILE).
inline constexpr size_t kMaxTextBytes = size_t{256} << 20;

// Reads every byte of `path`. kNotFound naming the path when there is no such file;
// kInvalidArgument naming the path when it is a directory, cannot be read, is empty, or holds more
// than `max_bytes` bytes (it is not read past max_bytes + 1).
Result<std::string> ReadTextFile(const std::string& path, size_t max_bytes = kMaxTextBytes);

// Where Debian's packages put the KJV: bible-kjv's `bible` program, and bible-kjv-text's
// compressed text (bible.data, the Bible Retrieval System's own format, which only `bible` reads).
struct KjvOptions {
  std::string program = "/usr/bin/bible";
  std::string data_dir = "/usr/lib";
  // The KJV is 4,298,239 bytes; a program that prints more than this is refused.
  size_t max_bytes = size_t{16} << 20;
  // The whole run takes about 0.1 s; one that takes longer than this is killed.
  std::chrono::milliseconds timeout{10'000};
};

// The King James Version, byte for byte as `bible gen1:1-rev22:21` prints it to an 80-column
// terminal (or with COLUMNS unset): 4,298,239 bytes of ASCII, starting "\nGenesis 1\n\n  1 In the
// beginning God created the heaven and the earth.\n" and ending "...be with you all. Amen.\n"; each
// chapter under a "Book N" line, each verse indented with its number, lines wrapped at 79 columns.
// So `bible gen1:1-rev22:21 > kjv.txt` and --data text:kjv.txt train on the same bytes.
//
// Runs `program -p data_dir -l 79 gen1:1-rev22:21` once, with an empty environment (so COLUMNS,
// which changes the wrapping, cannot leak in) and stdin from /dev/null, and blocks until it exits.
// `clock` measures the timeout. kNotFound naming the Debian package to install when the program or
// bible.data is missing; kDeadlineExceeded when it runs past the timeout and kInvalidArgument when
// it prints more than max_bytes (it is killed in both cases); kInternal, with its stderr, when it
// cannot be started, exits with an error or prints nothing.
Result<std::string> ReadKjv(const Clock& clock, const KjvOptions& options = {});

// The text `spec` names: ReadKjv for kKjv, ReadTextFile for kTextFile. kInvalidArgument for a
// source that is not text.
Result<std::string> ReadTextSource(const DataSpec& spec, const Clock& clock);

// The longest sequence a corpus cuts windows for.
inline constexpr int64_t kMaxSeqLen = int64_t{1} << 16;

// An evaluation window: the window_len() tokens starting at byte `begin`. A model reads tokens
// 0..seq_len-1 of it and predicts tokens 1..seq_len; the prediction at input position j is of byte
// begin + 1 + j, and counts towards the held-out score only for j >= first_scored.
struct EvalWindow {
  int64_t begin = 0;
  int64_t first_scored = 0;
};

// A text, cut for a language model with sequences of `seq_len` tokens (one token per byte).
//
// The split: the held-out bytes are the last ceil(size / 20) bytes (5%, rounded up so any text has
// at least one), the training bytes are everything before them: [0, train_bytes()) and
// [train_bytes(), size()). For the KJV (4,298,239 bytes) that is 4,083,327 and 214,912 bytes.
//
// Windows are seq_len + 1 consecutive tokens: the model reads the first seq_len and predicts the
// last seq_len. Training windows lie wholly in the training bytes. Evaluation windows score every
// held-out byte exactly once and no training byte ever; their inputs may reach back into the
// training bytes (the first held-out byte is predicted from the byte before it).
class TextCorpus {
 public:
  // kInvalidArgument when seq_len is not in 1..kMaxSeqLen, the text is empty, or the training bytes
  // are fewer than one window (seq_len + 1), naming the sizes.
  static Result<TextCorpus> Create(std::string text, int64_t seq_len);

  const std::string& text() const { return text_; }
  int64_t size() const { return static_cast<int64_t>(text_.size()); }
  int64_t seq_len() const { return seq_len_; }
  int64_t window_len() const { return seq_len_ + 1; }
  int64_t train_bytes() const { return train_bytes_; }
  int64_t held_out_bytes() const { return size() - train_bytes_; }

  // The first bytes of `count` (>= 0) training windows for optimizer step `step` and `seed`, each
  // uniform over 0..train_bytes() - window_len(). A pure function of (seed, step, index), computed
  // with SplitMix64 and a multiply-shift range reduction, so it is the same on every machine and
  // standard library and a resumed trainer draws what it would have drawn.
  std::vector<int64_t> TrainWindowBegins(uint64_t seed, int64_t step, int64_t count) const;

  // The evaluation windows, in order. Window k scores held-out bytes [train_bytes() + k * seq_len,
  // + seq_len), with begin = train_bytes() + k * seq_len - 1 and first_scored = 0. When seq_len
  // does not divide held_out_bytes(), the remaining r bytes are scored by one last full-length
  // window that ends at the end of the text: begin = size() - window_len(), first_scored = seq_len
  // - r. So every window has the same shape (they batch), and the windows score held_out_bytes()
  // bytes.
  std::vector<EvalWindow> EvalWindows() const;

  // The tokens of the windows starting at `begins`, row-major: begins.size() rows of window_len()
  // tokens. kInvalidArgument naming the first begin outside 0..size() - window_len().
  Result<std::vector<Token>> Gather(std::span<const int64_t> begins) const;

 private:
  TextCorpus(std::string text, int64_t seq_len, int64_t train_bytes)
      : text_(std::move(text)), seq_len_(seq_len), train_bytes_(train_bytes) {}

  std::string text_;
  int64_t seq_len_;
  int64_t train_bytes_;
};

// Bits per byte from the summed negative log-likelihood, in nats, of the tokens that cover `bytes`
// bytes: nll / (bytes * ln 2). kInvalidArgument when bytes < 1 or nll is negative or not finite.
Result<double> BitsPerByte(double nll_nats, int64_t bytes);

}  // namespace dmoe::data

#endif  // DMOE_DATA_TEXT_CORPUS_H_
