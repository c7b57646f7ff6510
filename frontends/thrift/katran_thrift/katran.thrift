// KatranService: the control-plane RPC interface of the katran load balancer.
//
// Wire-compatible with Katran's example thrift service (package lb.katran):
// same service name, method names, field ids and types.  Only stock Apache
// Thrift syntax is used, so `thrift --gen <lang>` of any Apache Thrift
// compiler (>= 0.9) accepts this file; fbthrift accepts it as well.
//
// Errors: a failed call is answered with a TApplicationException
// (type INTERNAL_ERROR) whose message says what was wrong; method signatures
// carry no `throws` clause so that old clients keep working unchanged.

namespace cpp2 lb.katran
namespace cpp lb.katran
namespace py katran_thrift.gen
namespace go lb.katran

// What to do with a batch of reals / quic reals.
enum Action {
  ADD = 0,
  DEL = 1,
}

// A VIP: address (v4 or v6 text), port (0 = any), protocol number (6 tcp, 17 udp).
struct Vip {
  1: string address;
  2: i32 port;
  3: i32 protocol;
}

// A VIP plus flags; setFlag=false clears the given flags (modifyVip).
struct VipMeta {
  1: Vip vip;
  2: i64 flags;
  3: optional bool setFlag = true;
}

// Flags of a real; setFlag=false clears the given flags (modifyReal).
struct RealMeta {
  1: string address;
  2: i32 flags;
  3: optional bool setFlag = true;
}

// A real (backend) of a VIP.
struct Real {
  1: string address;
  2: i32 weight;
  3: i32 flags;
}

// server id (in QUIC connection ids) -> real address.
struct QuicReal {
  1: string address;
  2: i32 id;
}

// A MAC address as text, "aa:bb:cc:dd:ee:ff".
struct Mac {
  1: string mac;
}

// Two counters; their meaning depends on the getter.
struct Stats {
  1: i64 v1;
  2: i64 v2;
}

// Healthcheck destination: packets with this socket mark go to this address.
struct Healthcheck {
  1: i32 somark;
  2: string address;
}

typedef map<i32, string> hcMap
typedef list<Real> Reals
typedef list<QuicReal> QuicReals

service KatranService {
  bool changeMac(1: Mac newMac);
  Mac getMac();

  bool addVip(1: VipMeta vipMeta);
  bool delVip(1: Vip vip);
  list<Vip> getAllVips();
  bool modifyVip(1: VipMeta vipMeta);
  bool modifyReal(1: RealMeta realMeta);
  i64 getVipFlags(1: Vip vip);

  bool addRealForVip(1: Real real, 2: Vip vip);
  bool delRealForVip(1: Real real, 2: Vip vip);
  bool modifyRealsForVip(1: Action action, 2: Reals real, 3: Vip vip);
  Reals getRealsForVip(1: Vip vip);

  bool modifyQuicRealsMapping(1: Action action, 2: QuicReals reals);
  QuicReals getQuicRealsMapping();

  Stats getStatsForVip(1: Vip vip);
  Stats getLruStats();
  Stats getLruMissStats();
  Stats getLruFallbackStats();
  Stats getIcmpTooBigStats();

  bool addHealthcheckerDst(1: Healthcheck healthcheck);
  bool delHealthcheckerDst(1: i32 somark);
  hcMap getHealthcheckersDst();
}
