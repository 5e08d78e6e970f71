#include "data/text_corpus.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>
#include <vector>

#include "core/hex.h"
#include "core/identity.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::data {
namespace {

constexpr int64_t kKjvBytes = 4'298'239;

// The KJV, read once for the whole test binary (about 0.1 s).
const std::string& Kjv() {
  static const std::string* kjv = [] {
    Result<std::string> r = ReadKjv(RealClock::Instance());
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return new std::string(r.ok() ? *r : "");
  }();
  return *kjv;
}

TEST(KjvTest, IsWhatTheBibleProgramPrints) {
  const std::string& kjv = Kjv();
  ASSERT_EQ(static_cast<int64_t>(kjv.size()), kKjvBytes);
  EXPECT_TRUE(kjv.starts_with(
      "\nGenesis 1\n\n  1 In the beginning God created the heaven and the earth.\n  2 And the "
      "earth was without form, and void;"));
  EXPECT_TRUE(kjv.ends_with("  21 The grace of our Lord Jesus Christ be with you all. Amen.\n"));
  // BLAKE2b-256 of `bible gen1:1-rev22:21 > kjv.txt` run in a shell (Python's hashlib agrees).
  EXPECT_EQ(HexEncode(Blake2b256(kjv)),
            "2d5b8e02b32616505921bee0f3f0bfc887eac70e564977ea9c4ec511882d6745");
  // 31,102 verses, each on a line of its own that starts with its indented number; 1,189 chapters,
  // each heading followed by a blank line and preceded by one; no line past 79 columns; all ASCII.
  int64_t verses = 0, blank = 0, longest = 0, line_start = 0;
  for (int64_t i = 0; i < kKjvBytes; ++i) {
    const auto c = static_cast<unsigned char>(kjv[i]);
    ASSERT_TRUE(c == '\n' || (c >= 0x20 && c < 0x7f)) << "byte " << i;
    if (c != '\n') continue;
    const std::string_view line(kjv.data() + line_start, i - line_start);
    blank += line.empty();
    verses += line.size() > 3 && line.starts_with("  ") && std::isdigit(line[2]);
    longest = std::max<int64_t>(longest, static_cast<int64_t>(line.size()));
    line_start = i + 1;
  }
  EXPECT_EQ(verses, 31'102);
  EXPECT_EQ(blank, 2 * 1'189);
  EXPECT_EQ(longest, 79);
}

TEST(KjvTest, MissingPackagesAreNamed) {
  const RealClock& clock = RealClock::Instance();
  Result<std::string> no_program = ReadKjv(clock, {.program = "/nonexistent/bible"});
  EXPECT_EQ(no_program.status().code(), Code::kNotFound);
  EXPECT_EQ(no_program.status().message(),
            "the KJV needs /nonexistent/bible: install Debian's bible-kjv (scripts/setup does)");
  Result<std::string> no_text = ReadKjv(clock, {.data_dir = "/nonexistent"});
  EXPECT_EQ(no_text.status().code(), Code::kNotFound);
  EXPECT_EQ(no_text.status().message(),
            "the KJV needs /nonexistent/bible.data: install Debian's bible-kjv-text (scripts/setup "
            "does)");
}

// A directory with a bible.data and an executable `bible` script whose body is `script`.
struct FakeBible {
  explicit FakeBible(const std::string& script) {
    dir.WriteFile("bible.data", "not read");
    program = dir.WriteFile("bible", "#!/bin/sh\n" + script + "\n");
    EXPECT_EQ(::chmod(program.c_str(), 0700), 0);
  }
  KjvOptions Options() const { return {.program = program, .data_dir = dir.path()}; }
  testing::TempDir dir{"dmoe-kjv"};
  std::string program;
};

TEST(KjvTest, TheProgramGetsFixedArgumentsAndAnEmptyEnvironment) {
  FakeBible fake("echo \"$# $1 $2 $4 $5 $3\"; echo \"COLUMNS=$COLUMNS\"");
  ::setenv("COLUMNS", "200", 1);
  Result<std::string> r = ReadKjv(RealClock::Instance(), fake.Options());
  ::unsetenv("COLUMNS");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, "5 -p " + fake.dir.path() + " 79 gen1:1-rev22:21 -l\nCOLUMNS=\n");
}

TEST(KjvTest, AFailingProgramIsAnInternalErrorWithItsStderr) {
  FakeBible fake("echo 'Cannot open data file bible.data' >&2; exit 3");
  Result<std::string> r = ReadKjv(RealClock::Instance(), fake.Options());
  EXPECT_EQ(r.status().code(), Code::kInternal);
  EXPECT_EQ(r.status().message(),
            fake.program + " exited with status 3: Cannot open data file bible.data\n");
  FakeBible silent("exit 0");
  EXPECT_EQ(ReadKjv(RealClock::Instance(), silent.Options()).status().message(),
            silent.program + " printed nothing");
}

TEST(KjvTest, OutputPastTheLimitIsRefusedAndTheProgramKilled) {
  FakeBible fake("exec /usr/bin/yes");
  KjvOptions o = fake.Options();
  o.max_bytes = 1 << 20;
  Result<std::string> r = ReadKjv(RealClock::Instance(), o);
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(r.status().message(), fake.program + " printed more than 1048576 bytes; killed");
}

TEST(KjvTest, AProgramThatHangsIsKilledAtTheTimeout) {
  FakeBible fake("exec /bin/sleep 60");
  KjvOptions o = fake.Options();
  o.timeout = std::chrono::milliseconds(200);
  Result<std::string> r = ReadKjv(RealClock::Instance(), o);
  EXPECT_EQ(r.status().code(), Code::kDeadlineExceeded);
  EXPECT_EQ(r.status().message(), fake.program + " did not finish within 200 ms; killed");
}

TEST(TextFileTest, ReadsAnyBytesExactly) {
  testing::TempDir dir("dmoe-text");
  // Not UTF-8, with a NUL: byte tokens take any byte, so the file is read as it is.
  const std::string bytes("caf\xe9\x00\xff\xfe\n", 8);
  Result<std::string> r = ReadTextFile(dir.WriteFile("latin1.txt", bytes));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, bytes);
}

TEST(TextFileTest, RefusesMissingEmptyDirectoryAndOversizedFiles) {
  testing::TempDir dir("dmoe-text");
  Result<std::string> missing = ReadTextFile(dir.Sub("nope.txt"));
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_EQ(missing.status().message(), "text file " + dir.Sub("nope.txt") + " does not exist");
  Result<std::string> empty = ReadTextFile(dir.WriteFile("empty.txt", ""));
  EXPECT_EQ(empty.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(empty.status().message(), "text file " + dir.Sub("empty.txt") + " is empty");
  Result<std::string> directory = ReadTextFile(dir.path());
  EXPECT_EQ(directory.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(directory.status().message(),
            "text file " + dir.path() + " is a directory, not a file");
  const std::string path = dir.WriteFile("big.txt", std::string(101, 'a'));
  Result<std::string> big = ReadTextFile(path, 100);
  EXPECT_EQ(big.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(big.status().message(), "text file " + path + " holds more than 100 bytes, the limit");
  EXPECT_EQ(ReadTextFile(path, 101)->size(), 101u);
}

TEST(TextFileTest, ReadTextSourceFollowsTheSpec) {
  testing::TempDir dir("dmoe-text");
  const std::string path = dir.WriteFile("a.txt", "In the beginning");
  Result<std::string> file = ReadTextSource({DataSource::kTextFile, path}, RealClock::Instance());
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(*file, "In the beginning");
  Result<std::string> kjv = ReadTextSource({DataSource::kKjv, ""}, RealClock::Instance());
  ASSERT_TRUE(kjv.ok());
  EXPECT_EQ(kjv->size(), Kjv().size());
  Result<std::string> images =
      ReadTextSource({DataSource::kFashionMnist, ""}, RealClock::Instance());
  EXPECT_EQ(images.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(images.status().message(), "fashion-mnist is images, not text");
}

TEST(TextCorpusTest, SplitsTheKjvAtItsLastFivePercent) {
  Result<TextCorpus> c = TextCorpus::Create(Kjv(), 256);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->size(), kKjvBytes);
  EXPECT_EQ(c->held_out_bytes(), 214'912);  // ceil(4,298,239 / 20)
  EXPECT_EQ(c->train_bytes(), 4'083'327);
  // The held-out text starts inside Colossians 1:16.
  EXPECT_EQ(c->text().substr(c->train_bytes() - 10, 50),
            "nvisible, whether they be thrones, or dominions, o");
}

TEST(TextCorpusTest, TokenizerRoundTripsTheKjv) {
  std::vector<Token> tokens = EncodeBytes(Kjv());
  ASSERT_EQ(static_cast<int64_t>(tokens.size()), kKjvBytes);
  EXPECT_EQ(tokens[13], ' ');
  EXPECT_EQ(tokens[14], '1');
  EXPECT_EQ(*DecodeBytes(tokens), Kjv());
  // All ASCII, so the UTF-8 decoder passes it through unchanged.
  EXPECT_EQ(DecodeUtf8Lossy(Kjv()), Kjv());
}

TEST(TextCorpusTest, TrainingWindowsAreDeterministicForASeed) {
  Result<TextCorpus> c = TextCorpus::Create(Kjv(), 256);
  ASSERT_TRUE(c.ok());
  // Computed independently (SplitMix64 in Python): uniform over 0..4,083,327 - 257.
  EXPECT_EQ(c->TrainWindowBegins(1, 0, 4),
            (std::vector<int64_t>{2831659, 1728002, 461759, 3498145}));
  EXPECT_EQ(c->TrainWindowBegins(1, 1, 4),
            (std::vector<int64_t>{1394904, 1795673, 1093745, 1871310}));
  // A longer batch starts with the same windows: window i depends on (seed, step, i) only.
  std::vector<int64_t> eight = c->TrainWindowBegins(1, 0, 8);
  EXPECT_EQ(std::vector<int64_t>(eight.begin(), eight.begin() + 4), c->TrainWindowBegins(1, 0, 4));
  EXPECT_NE(c->TrainWindowBegins(2, 0, 4), c->TrainWindowBegins(1, 0, 4));
  // Many draws stay in the training bytes and spread over them: the mean is near the middle.
  std::vector<int64_t> many = c->TrainWindowBegins(5, 3, 20'000);
  const int64_t max_begin = c->train_bytes() - c->window_len();
  double sum = 0;
  for (int64_t b : many) {
    ASSERT_GE(b, 0);
    ASSERT_LE(b, max_begin);
    sum += static_cast<double>(b);
  }
  EXPECT_NEAR(sum / many.size() / max_begin, 0.5, 0.01);
}

TEST(TextCorpusTest, GatherReturnsTheWindowsBytesAsTokens) {
  Result<TextCorpus> c = TextCorpus::Create(Kjv(), 8);
  ASSERT_TRUE(c.ok());
  const std::vector<int64_t> begins = {12, 0};
  Result<std::vector<Token>> tokens = c->Gather(begins);
  ASSERT_TRUE(tokens.ok());
  EXPECT_EQ(*tokens, EncodeBytes("  1 In th\nGenesis "));
  const int64_t last = c->size() - c->window_len();
  EXPECT_EQ(*c->Gather(std::vector<int64_t>{last}), EncodeBytes("l. Amen.\n"));
  Result<std::vector<Token>> past = c->Gather(std::vector<int64_t>{last + 1});
  EXPECT_EQ(past.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(past.status().message(), "window begin 4298231 is not in 0..4298230");
  EXPECT_EQ(c->Gather(std::vector<int64_t>{-1}).status().code(), Code::kInvalidArgument);
}

// How often each byte of `c` is scored by its evaluation windows.
std::vector<int> ScoreCounts(const TextCorpus& c) {
  std::vector<int> scored(c.size(), 0);
  for (const EvalWindow& w : c.EvalWindows()) {
    EXPECT_GE(w.begin, 0);
    EXPECT_LE(w.begin + c.window_len(), c.size());
    for (int64_t j = w.first_scored; j < c.seq_len(); ++j) ++scored[w.begin + 1 + j];
  }
  return scored;
}

TEST(TextCorpusTest, EvalWindowsScoreEveryHeldOutKjvByteOnce) {
  Result<TextCorpus> c = TextCorpus::Create(Kjv(), 256);
  ASSERT_TRUE(c.ok());
  std::vector<EvalWindow> w = c->EvalWindows();
  // 214,912 = 839 * 256 + 128: 839 full windows, then one scoring the last 128 bytes.
  ASSERT_EQ(w.size(), 840u);
  EXPECT_EQ(w[0].begin, c->train_bytes() - 1);
  EXPECT_EQ(w[0].first_scored, 0);
  EXPECT_EQ(w[838].begin, c->train_bytes() - 1 + 838 * 256);
  EXPECT_EQ(w[839].begin, kKjvBytes - 257);
  EXPECT_EQ(w[839].first_scored, 128);
  std::vector<int> scored = ScoreCounts(*c);
  EXPECT_EQ(std::count(scored.begin(), scored.begin() + c->train_bytes(), 0), c->train_bytes());
  EXPECT_EQ(std::count(scored.begin() + c->train_bytes(), scored.end(), 1), c->held_out_bytes());
}

TEST(TextCorpusTest, EvalWindowsOnASmallTextAreExact) {
  // 100 bytes: held-out 95..99 (5 bytes); seq_len 2 scores 95-96, 97-98, then 99 alone.
  Result<TextCorpus> c = TextCorpus::Create(std::string(100, 'a'), 2);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->train_bytes(), 95);
  std::vector<EvalWindow> w = c->EvalWindows();
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[0].begin, 94);
  EXPECT_EQ(w[1].begin, 96);
  EXPECT_EQ(w[2].begin, 97);
  EXPECT_EQ(w[0].first_scored, 0);
  EXPECT_EQ(w[1].first_scored, 0);
  EXPECT_EQ(w[2].first_scored, 1);
  // A held-out split shorter than one sequence: one window reaching back into the training bytes.
  Result<TextCorpus> tiny = TextCorpus::Create(std::string(22, 'a'), 19);
  ASSERT_TRUE(tiny.ok());
  EXPECT_EQ(tiny->held_out_bytes(), 2);
  ASSERT_EQ(tiny->EvalWindows().size(), 1u);
  EXPECT_EQ(tiny->EvalWindows()[0].begin, 2);
  EXPECT_EQ(tiny->EvalWindows()[0].first_scored, 17);
  for (int64_t seq_len : {1, 2, 3, 5, 19}) {
    Result<TextCorpus> each = TextCorpus::Create(std::string(221, 'a'), seq_len);
    ASSERT_TRUE(each.ok());
    std::vector<int> scored = ScoreCounts(*each);
    EXPECT_EQ(std::count(scored.begin() + each->train_bytes(), scored.end(), 1), 12) << seq_len;
    EXPECT_EQ(std::count(scored.begin(), scored.end(), 0), 221 - 12) << seq_len;
  }
}

TEST(TextCorpusTest, ATextShorterThanOneWindowIsRefused) {
  testing::TempDir dir("dmoe-text");
  Result<std::string> small = ReadTextFile(dir.WriteFile("small.txt", std::string(21, 'a')));
  ASSERT_TRUE(small.ok());
  Result<TextCorpus> c = TextCorpus::Create(*small, 19);
  EXPECT_EQ(c.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(c.status().message(),
            "the text has 21 bytes; its training split (all but the last 2) has 19, fewer than one "
            "window of sequence length + 1 = 20");
  EXPECT_EQ(TextCorpus::Create("", 4).status().message(), "the text is empty");
  EXPECT_EQ(TextCorpus::Create("abc", 0).status().message(),
            "sequence length 0 is not in 1..65536");
  EXPECT_EQ(TextCorpus::Create(Kjv(), kMaxSeqLen + 1).status().code(), Code::kInvalidArgument);
  EXPECT_TRUE(TextCorpus::Create(Kjv(), kMaxSeqLen).ok());
}

TEST(BitsPerByteTest, ConvertsNatsPerByteToBits) {
  // A model that gives each byte probability 1/256 scores 8 bits per byte; one of 1/2, 1 bit.
  EXPECT_DOUBLE_EQ(*BitsPerByte(1000 * std::log(256.0), 1000), 8.0);
  EXPECT_DOUBLE_EQ(*BitsPerByte(214'912 * std::log(2.0), 214'912), 1.0);
  EXPECT_EQ(*BitsPerByte(0.0, 5), 0.0);
  EXPECT_EQ(BitsPerByte(1.0, 0).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(BitsPerByte(-1.0, 5).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(BitsPerByte(std::nan(""), 5).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(BitsPerByte(INFINITY, 5).status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace dmoe::data
