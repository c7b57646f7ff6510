/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Exporting C enums to the control plane through BTF.
 *
 * clang only records an enum in the object's BTF when some declaration uses
 * it. KATRAN_ABI_ENUM(tag) declares one variable of type `enum tag` in the
 * ".katran_abi" section: libbpf creates no map for that section and no code
 * reads it, so the program is unchanged, but the BTF now carries the enum's
 * names and values; katran/contract.py checks them (tests/test_abi.py, and
 * the loaders each time an object is opened).
 */
#ifndef KATRAN_LIB_ABI_H
#define KATRAN_LIB_ABI_H

#define KATRAN_ABI_ENUM(tag) \
	const enum tag __katran_abi_##tag __attribute__((section(".katran_abi"), used)) = 0

#endif /* KATRAN_LIB_ABI_H */
