// The data sets a trainer can learn from, chosen by dmoe-train's --data. Each has its reader in
// data/ (data/fashion_mnist.h).
#ifndef DMOE_DATA_DATA_SOURCE_H_
#define DMOE_DATA_DATA_SOURCE_H_

namespace dmoe::data {

enum class DataSource {
  kFashionMnist,  // --data fashion-mnist: 28x28 grey images, 10 classes (data/fashion_mnist.h)
};

}  // namespace dmoe::data

#endif  // DMOE_DATA_DATA_SOURCE_H_
