// Test fixture for tests/test_adapter.py: a tiny XDP + tc program exercising the
// map kinds and load-time knobs the adapter must handle.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct adapter_val {
	__u64 hits;
	__u32 stamp;
	union {
		__u16 port;
		__u8 port_bytes[2];
	};
	__u8 proto;
	__u8 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct adapter_val);
	__uint(max_entries, 64);
} adapter_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 4);
} adapter_pcpu SEC(".maps");

struct adapter_inner_lru {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, 4);
	__array(values, struct adapter_inner_lru);
} adapter_lru_maps SEC(".maps");

/* load-time knobs */
const volatile __u32 verdict = XDP_PASS;
const volatile __u32 stamp = 0;
const volatile __u64 wide_knob = 0;

/* keeps the struct in BTF even if unused by a map */
struct adapter_val adapter_val_btf_anchor;

SEC("xdp")
int adapter_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	__u64 *cnt;
	__u32 key;

	cnt = bpf_map_lookup_elem(&adapter_pcpu, &zero);
	if (cnt)
		*cnt += 1;
	if (data + 8 > data_end)
		return verdict;
	key = *(__u32 *)data;

	struct adapter_val *val = bpf_map_lookup_elem(&adapter_hash, &key);
	if (val) {
		__sync_fetch_and_add(&val->hits, 1);
		*(__u32 *)(data + 4) = val->stamp;
	}

	void *lru = bpf_map_lookup_elem(&adapter_lru_maps, &zero);
	if (lru) {
		__u64 *seen = bpf_map_lookup_elem(lru, &key);
		if (seen) {
			*seen += 1;
		} else {
			__u64 one = 1;
			bpf_map_update_elem(lru, &key, &one, BPF_ANY);
		}
	}

	if (stamp)
		*(__u32 *)data = stamp;
	return verdict;
}

SEC("tc")
int adapter_tc(struct __sk_buff *skb)
{
	__u32 one = 1;
	__u64 *cnt = bpf_map_lookup_elem(&adapter_pcpu, &one);

	if (cnt)
		*cnt += 1;
	return 0; /* TC_ACT_OK */
}

char LICENSE[] SEC("license") = "GPL";
