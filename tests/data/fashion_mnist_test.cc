#include "data/fashion_mnist.h"

#include <gtest/gtest.h>

#include <numeric>

namespace dmoe::data {
namespace {

TEST(FashionMnistTest, LoadsBothSplitsFromTheDebianPackage) {
  Result<ImageDataset> train = LoadFashionMnist(true);
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  EXPECT_EQ(train->count, 60000);
  EXPECT_EQ(train->rows, 28);
  EXPECT_EQ(train->cols, 28);
  EXPECT_EQ(train->pixels.size(), 60000u * 784);
  Result<ImageDataset> test = LoadFashionMnist(false);
  ASSERT_TRUE(test.ok());
  EXPECT_EQ(test->count, 10000);
  // The test split is balanced: 1000 images of each of the 10 classes.
  std::vector<int> per_class(10, 0);
  for (uint8_t l : test->labels) ++per_class[l];
  EXPECT_EQ(per_class, std::vector<int>(10, 1000));
  // Real images, not zeros: the mean pixel of the training set is about 72.9 (0.286 * 255).
  double mean =
      std::accumulate(train->pixels.begin(), train->pixels.end(), 0.0) / train->pixels.size();
  EXPECT_NEAR(mean, 72.94, 0.5);
}

TEST(FashionMnistTest, MissingDirectoryNamesThePackage) {
  Result<ImageDataset> d = LoadFashionMnist(true, "/nonexistent");
  EXPECT_EQ(d.status().code(), Code::kNotFound);
  EXPECT_NE(d.status().message().find("dataset-fashion-mnist"), std::string::npos);
}

TEST(FashionMnistTest, ParseIdxRefusesMalformedBuffers) {
  const std::vector<std::vector<uint8_t>> bad = {
      {},
      {0, 0, 8},
      {1, 0, 8, 1, 0, 0, 0, 1, 7},
      {0, 0, 0x0d, 1, 0, 0, 0, 1, 7},                           // float data
      {0, 0, 8, 0},                                             // no dims
      {0, 0, 8, 1, 0, 0},                                       // truncated dims
      {0, 0, 8, 1, 0, 0, 0, 2, 7},                              // 1 byte of 2
      {0, 0, 8, 1, 0, 0, 0, 1, 7, 7},                           // trailing byte
      {0, 0, 8, 2, 255, 255, 255, 255, 255, 255, 255, 255, 1},  // absurd dims
  };
  for (const auto& b : bad)
    EXPECT_EQ(ParseIdx(b).status().code(), Code::kInvalidArgument) << b.size();
  Result<IdxArray> ok = ParseIdx(std::vector<uint8_t>{0, 0, 8, 2, 0, 0, 0, 1, 0, 0, 0, 2, 5, 6});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->dims, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(ok->data, (std::vector<uint8_t>{5, 6}));
}

}  // namespace
}  // namespace dmoe::data
