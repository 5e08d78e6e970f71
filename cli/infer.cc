// `dmoe infer`: asks a router to run a published model (PROTOCOL section 5).
//   dmoe infer --router URL --model NAME --inputs FILE.json     prints the router's JSON answer
//   dmoe infer --router URL --model NAME --fashion-mnist-test N classifies the first N test images
//                                                               and prints the accuracy it measured
#include <CLI/CLI.hpp>

#include <algorithm>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "cli/commands.h"
#include "core/integer.h"
#include "data/fashion_mnist.h"
#include "net/http_client.h"
#include "tensor/safetensors.h"

namespace dmoe::cli {
namespace {

Result<net::Response> Post(const std::string& url, const std::string& type,
                           std::vector<uint8_t> body) {
  DMOE_ASSIGN_OR_RETURN(net::Response r, net::Fetch("POST", url, {{"Content-Type", type}},
                                                    std::move(body), std::chrono::seconds(120)));
  return r;
}

}  // namespace

int RunInfer(const std::string& router, const std::string& model, const std::string& inputs_path,
             int64_t fashion_mnist_count, std::ostream& out, std::ostream& err) {
  const std::string url = router + "/v1/models/" + model + "/infer";
  if (!inputs_path.empty()) {
    std::ifstream in(inputs_path);
    if (!in) return PrintError(err, NotFoundError("cannot read " + inputs_path));
    std::stringstream buf;
    buf << in.rdbuf();
    std::string text = buf.str();
    Result<net::Response> r = Post(url, "application/json", {text.begin(), text.end()});
    if (!r.ok()) return PrintError(err, r.status());
    out << r->body_view() << "\n";
    return kExitOk;
  }
  Result<data::ImageDataset> test = data::LoadFashionMnist(false);
  if (!test.ok()) return PrintError(err, test.status());
  const int64_t n = std::min<int64_t>(fashion_mnist_count, test->count);
  const int64_t pixels = test->rows * test->cols;
  int64_t correct = 0, version = 0;
  // Batches of 500 keep each request small.
  for (int64_t start = 0; start < n; start += 500) {
    const int64_t len = std::min<int64_t>(500, n - start);
    std::vector<float> x(len * pixels);
    for (int64_t i = 0; i < len * pixels; ++i) x[i] = test->pixels[start * pixels + i] / 255.0f;
    Result<std::vector<uint8_t>> body =
        safetensors::Encode({{"x",
                              safetensors::DType::kF32,
                              {len, pixels},
                              {reinterpret_cast<const uint8_t*>(x.data()), x.size() * 4}}});
    if (!body.ok()) return PrintError(err, body.status());
    Result<net::Response> r = Post(url, "application/x-safetensors", std::move(body).value());
    if (!r.ok()) return PrintError(err, r.status());
    Result<safetensors::Decoded> d = safetensors::Decode(r->body);
    if (!d.ok()) return PrintError(err, d.status());
    const safetensors::TensorView* y = d->Find("y");
    if (y == nullptr || y->shape.size() != 2 || y->shape[0] != len ||
        y->dtype != safetensors::DType::kF32) {
      return PrintError(err, InternalError("the router's answer has no F32 y [" +
                                           std::to_string(len) + ", classes]"));
    }
    const int64_t classes = y->shape[1];
    std::vector<float> logits(len * classes);
    std::copy(y->data.begin(), y->data.end(), reinterpret_cast<uint8_t*>(logits.data()));
    for (int64_t i = 0; i < len; ++i) {
      auto row = logits.begin() + i * classes;
      correct += std::max_element(row, row + classes) - row == test->labels[start + i];
    }
    auto v = d->metadata.find("model_version");
    if (v != d->metadata.end()) version = ParseInteger<int64_t>(v->second).value_or(version);
  }
  out << "accuracy " << std::fixed << std::setprecision(4) << static_cast<double>(correct) / n
      << " on " << n << " Fashion-MNIST test images (model " << model << " version " << version
      << ")\n";
  return kExitOk;
}

void AddInferCommand(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand("infer", "Run a published model through a router");
  auto router = std::make_shared<std::string>();
  auto model = std::make_shared<std::string>();
  auto inputs = std::make_shared<std::string>();
  auto count = std::make_shared<int64_t>(0);
  cmd->add_option("--router", *router, "router URL, e.g. http://127.0.0.1:8000")->required();
  cmd->add_option("--model", *model, "model name")->required();
  auto* in = cmd->add_option("--inputs", *inputs, "JSON file {\"inputs\": [[...], ...]}");
  auto* fm = cmd->add_option("--fashion-mnist-test", *count,
                             "classify the first N test images, print accuracy");
  in->excludes(fm);
  cmd->callback([=] {
    if (inputs->empty() && *count <= 0) {
      std::cerr << "error: give --inputs FILE or --fashion-mnist-test N\n";
      *exit_code = kExitError;
      return;
    }
    *exit_code = RunInfer(*router, *model, *inputs, *count, std::cout, std::cerr);
  });
}

}  // namespace dmoe::cli
