#include "core/host_port.h"

#include <gtest/gtest.h>

namespace dmoe {
namespace {

TEST(HostPortTest, ParsesIpv4Ipv6AndNames) {
  Result<HostPort> v4 = ParseHostPort("10.0.0.5:7000");
  ASSERT_TRUE(v4.ok()) << v4.status().ToString();
  EXPECT_EQ(v4->host, "10.0.0.5");
  EXPECT_EQ(v4->port, 7000);
  EXPECT_EQ(v4->ToString(), "10.0.0.5:7000");

  Result<HostPort> v6 = ParseHostPort("[::1]:80");
  ASSERT_TRUE(v6.ok()) << v6.status().ToString();
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->ToString(), "[::1]:80");

  Result<HostPort> name = ParseHostPort("node-3.example.org:65535");
  ASSERT_TRUE(name.ok()) << name.status().ToString();
  EXPECT_EQ(name->host, "node-3.example.org");
  EXPECT_EQ(name->port, 65535);
}

TEST(HostPortTest, PortZeroOnlyWhereAllowed) {
  EXPECT_TRUE(ParseHostPort("127.0.0.1:0").ok());
  Result<HostPort> r = ParseHostPort("127.0.0.1:0", PortRule::kNonZeroPort);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("port must be 1..65535"), std::string::npos);
}

TEST(HostPortTest, RefusesMalformedTextWithTheReason) {
  struct Case {
    const char* text;
    const char* why;
  };
  for (const Case& c : {Case{"127.0.0.1", "missing port"}, Case{":80", "missing host"},
                        Case{"::1:80", "must be in brackets"}, Case{"[::1:80", "unclosed"},
                        Case{"[]:80", "unclosed or empty"}, Case{"[nothex]:80", "bad IPv6"},
                        Case{"host:65536", "port must be 0..65535"},
                        Case{"host:8x", "port must be 0..65535"}, Case{"host:", "port must be"},
                        Case{"ho st:80", "bad character"}, Case{"http://h:80", "no scheme"}}) {
    SCOPED_TRACE(c.text);
    Result<HostPort> r = ParseHostPort(c.text);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.why), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find(c.text), std::string::npos) << r.status().message();
  }
}

}  // namespace
}  // namespace dmoe
