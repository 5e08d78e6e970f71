// The swarm dashboard (router/dashboard.html), embedded at build time.
#ifndef DMOE_ROUTER_DASHBOARD_ASSET_H_
#define DMOE_ROUTER_DASHBOARD_ASSET_H_

#include <string_view>

namespace dmoe::router {

std::string_view DashboardHtml();

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_DASHBOARD_ASSET_H_
