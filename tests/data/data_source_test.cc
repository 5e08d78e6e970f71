#include "data/data_source.h"

#include <gtest/gtest.h>

#include <string>

namespace dmoe::data {
namespace {

TEST(DataSourceTest, ParsesTheThreeForms) {
  Result<DataSpec> fm = ParseDataSpec("fashion-mnist");
  ASSERT_TRUE(fm.ok()) << fm.status().ToString();
  EXPECT_EQ(fm->source, DataSource::kFashionMnist);
  EXPECT_EQ(fm->path, "");
  Result<DataSpec> kjv = ParseDataSpec("kjv");
  ASSERT_TRUE(kjv.ok());
  EXPECT_EQ(kjv->source, DataSource::kKjv);
  EXPECT_EQ(kjv->path, "");
  Result<DataSpec> file = ParseDataSpec("text:/srv/corpus/war and peace.txt");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(file->source, DataSource::kTextFile);
  EXPECT_EQ(file->path, "/srv/corpus/war and peace.txt");
  // Everything after the first "text:" is the path, as given.
  EXPECT_EQ(ParseDataSpec("text:text:x")->path, "text:x");
  EXPECT_EQ(ParseDataSpec("text:kjv")->path, "kjv");
  EXPECT_EQ(ParseDataSpec("text:./a.txt")->path, "./a.txt");
}

TEST(DataSourceTest, TextSourcesAreKjvAndFiles) {
  EXPECT_FALSE(IsTextSource(DataSource::kFashionMnist));
  EXPECT_TRUE(IsTextSource(DataSource::kKjv));
  EXPECT_TRUE(IsTextSource(DataSource::kTextFile));
}

void ExpectRefused(std::string_view value, std::string_view message) {
  Result<DataSpec> r = ParseDataSpec(value);
  ASSERT_EQ(r.status().code(), Code::kInvalidArgument) << value;
  EXPECT_EQ(r.status().message(), message);
}

TEST(DataSourceTest, RefusesOtherValuesNamingWhatIsWrong) {
  ExpectRefused("", "--data '': expected fashion-mnist, kjv or text:FILE");
  ExpectRefused("KJV", "--data 'KJV': expected fashion-mnist, kjv or text:FILE");
  ExpectRefused(" kjv", "--data ' kjv': expected fashion-mnist, kjv or text:FILE");
  ExpectRefused("fashion_mnist",
                "--data 'fashion_mnist': expected fashion-mnist, kjv or text:FILE");
  ExpectRefused("text", "--data 'text': expected fashion-mnist, kjv or text:FILE");
  ExpectRefused("file:a.txt", "--data 'file:a.txt': expected fashion-mnist, kjv or text:FILE");
  ExpectRefused("text:", "--data text:FILE: FILE is empty");
  ExpectRefused(std::string_view("text:a\0b", 8),
                "--data 'text:a\\x00b': FILE contains a NUL byte");
  // Bytes that are not printable ASCII are shown escaped, and long values are cut.
  ExpectRefused("k\xc3\xa9v\n",
                "--data 'k\\xc3\\xa9v\\x0a': expected fashion-mnist, kjv or text:FILE");
  ExpectRefused(std::string(70, 'x'), "--data '" + std::string(64, 'x') +
                                          "...': expected fashion-mnist, kjv or text:FILE");
}

TEST(DataSourceTest, LimitsTheValueToPathMax) {
  const std::string longest = "text:" + std::string(kMaxDataValueBytes - 5, 'a');
  Result<DataSpec> ok = ParseDataSpec(longest);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->path.size(), kMaxDataValueBytes - 5);
  ExpectRefused(longest + "a", "--data: the value has 4097 bytes, at most 4096 allowed");
}

}  // namespace
}  // namespace dmoe::data
