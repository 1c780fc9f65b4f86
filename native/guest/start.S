/* start.S: the guest SDK's entry and interrupt stubs for x86-64 kernels on hvsim.
 *
 * What the loader must have done (docs/native-guests.md): long mode, paging with the kernel's
 * addresses identity-mapped (GVA == GPA), a 64-bit code segment in CS, interrupts off, RIP at
 * _start (the ELF entry). Nothing else is assumed: not RSP (a stack of our own in .bss is set
 * first), not a zeroed .bss (zeroed here, before anything uses it), not an IDT (hvg_idt_init
 * loads ours). Segment registers other than CS are not reloaded: long mode ignores their bases.
 */
    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    cli
    cld
    /* Zero .bss with rep stosb: it needs no stack, and the stack lives in .bss. */
    lea __bss_start(%rip), %rdi
    lea __bss_end(%rip), %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    rep stosb
    lea hvg_stack_top(%rip), %rsp
    xor %ebp, %ebp
    call hvg_idt_init
    call kmain
    /* kmain returned: exit code 0. */
    xor %edi, %edi
    call hvg_exit
1:  cli
    hlt
    jmp 1b
    .size _start, . - _start

/* One stub per vector. The CPU pushes an error code for 8, 10-14, 17, 21, 29 and 30; the other
 * stubs push a 0 in its place so that every frame looks the same to isr_common. */
    .text
    .macro isr vector
    .align 16
isr\vector:
    .if (\vector == 8) || (\vector >= 10 && \vector <= 14) || (\vector == 17) || (\vector == 21) || (\vector == 29) || (\vector == 30)
    .else
    pushq $0
    .endif
    pushq $\vector
    jmp isr_common
    .endm

    .altmacro
    .set v, 0
    .rept 256
    isr %v
    .set v, v + 1
    .endr

/* Frame on entry: vector, error, rip, cs, rflags, rsp, ss. The caller-saved registers are saved
 * (the C handler preserves the rest); the stack is aligned to 16 for the call whatever it was. */
isr_common:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    push %rbp
    mov %rsp, %rbp
    mov 80(%rbp), %rdi      /* vector */
    mov 88(%rbp), %rsi      /* error code */
    mov 96(%rbp), %rdx      /* interrupted rip */
    and $-16, %rsp
    call hvg_interrupt
    mov %rbp, %rsp
    pop %rbp
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    add $16, %rsp           /* vector and error code */
    iretq

    .section .rodata
    .align 8
    .globl hvg_isr_table
hvg_isr_table:
    .macro isr_entry vector
    .quad isr\vector
    .endm
    .set v, 0
    .rept 256
    isr_entry %v
    .set v, v + 1
    .endr

    .bss
    .align 16
hvg_stack:
    .skip 16384
    .globl hvg_stack_top
hvg_stack_top:

    .section .note.GNU-stack, "", @progbits
