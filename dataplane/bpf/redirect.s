# calxdp's XDP program: every frame that arrives on a queue of an attached interface goes to the AF_XDP
# socket registered for that queue in the XSKMAP `calxdp_xsks`; a queue without a socket drops the frame,
# so nothing reaches the node's kernel stack around the policy (the host stack is reached through the tap).
#
# Rebuild the committed object (no clang needed; LLVM's assembler):
#   llvm-mc -triple bpfel -filetype=obj -o dataplane/bpf/redirect.o dataplane/bpf/redirect.s
# The test `xdp::tests::committed_object_matches_source` checks the two agree when llvm-mc is present.

	.text
	.section	xdp,"ax",@progbits
	.globl	calxdp_redirect
	.type	calxdp_redirect,@function
calxdp_redirect:
	# r2 = ctx->rx_queue_index (struct xdp_md, offset 16)
	r2 = *(u32 *)(r1 + 16)
	r1 = calxdp_xsks ll
	# flags: the action when the queue has no socket (XDP_DROP = 1)
	r3 = 1
	# bpf_redirect_map(map, key, flags)
	call 51
	exit
.Lfunc_end0:
	.size	calxdp_redirect, .Lfunc_end0-calxdp_redirect

# A legacy map definition (struct bpf_map_def): type, key size, value size, max entries, flags.
	.section	maps,"aw",@progbits
	.globl	calxdp_xsks
	.p2align	2
calxdp_xsks:
	# BPF_MAP_TYPE_XSKMAP
	.long	17
	.long	4
	.long	4
	.long	64
	.long	0
	.size	calxdp_xsks, 20

	.section	license,"aw",@progbits
	.globl	_license
_license:
	.asciz	"GPL"
	.size	_license, 4
