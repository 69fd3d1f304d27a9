# The end-to-end benchmark's XDP programs (bench/src/e2e): three tiny programs, no packet access.
#
# - cxb_tx: XDP_TX. The traffic generator runs it with BPF_PROG_TEST_RUN in live-frames mode on the
#   generator-side veth: every repetition transmits the test frame out of that veth toward the node.
# - cxb_pass: XDP_PASS. Put on the node's ingress veth for the kernel-forwarding run where GRO cannot be
#   turned on: a veth only accepts XDP_TX/redirected frames when its peer has NAPI (an XDP program or GRO).
# - cxb_count: counts every frame into `cxb_counts[0]` and drops it. Sits on the sink's veth, so the sink
#   costs almost nothing and the benchmark can poll the count cheaply (a map read, any namespace).
#
# Rebuild the committed object (no clang needed; LLVM's assembler):
#   llvm-mc -triple bpfel -filetype=obj -o bench/bpf/gen.o bench/bpf/gen.s

	.text
	.section	xdp,"ax",@progbits
	.globl	cxb_tx
	.type	cxb_tx,@function
cxb_tx:
	# XDP_TX = 3
	r0 = 3
	exit
.Lcxb_tx_end:
	.size	cxb_tx, .Lcxb_tx_end-cxb_tx

	.globl	cxb_pass
	.type	cxb_pass,@function
cxb_pass:
	# XDP_PASS = 2
	r0 = 2
	exit
.Lcxb_pass_end:
	.size	cxb_pass, .Lcxb_pass_end-cxb_pass

	.globl	cxb_count
	.type	cxb_count,@function
cxb_count:
	# key = 0 on the stack; r0 = bpf_map_lookup_elem(&cxb_counts, &key)
	r1 = 0
	*(u32 *)(r10 - 4) = r1
	r2 = r10
	r2 += -4
	r1 = cxb_counts ll
	call 1
	if r0 == 0 goto .Lcxb_count_drop
	r1 = 1
	lock *(u64 *)(r0 + 0) += r1
.Lcxb_count_drop:
	# XDP_DROP = 1
	r0 = 1
	exit
.Lcxb_count_end:
	.size	cxb_count, .Lcxb_count_end-cxb_count

# A legacy map definition (struct bpf_map_def): type, key size, value size, max entries, flags.
	.section	maps,"aw",@progbits
	.globl	cxb_counts
	.p2align	2
cxb_counts:
	# BPF_MAP_TYPE_ARRAY
	.long	2
	.long	4
	.long	8
	.long	1
	.long	0
	.size	cxb_counts, 20

	.section	license,"aw",@progbits
	.globl	_license
_license:
	.asciz	"GPL"
	.size	_license, 4
