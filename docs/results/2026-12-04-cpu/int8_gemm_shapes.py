"""bfloat16 F.linear against torch._int_mm (with the per-row quantization and the scaling back) on SmolLM2's four
prompt GEMM shapes at 288 rows, 2 threads: ms a call and the relative error against float32 on random data."""
import torch, time
torch.set_num_threads(2)
M=288
def t(f,n=40):
    for _ in range(5): f()
    s=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-s)/n
def q_rows(x):
    s = x.abs().amax(1, keepdim=True).clamp_(min=1e-8) / 127
    return torch.round(x / s).to(torch.int8), s
for K,N,name in ((576,960,"qkv"),(576,576,"o"),(576,3072,"gate_up"),(1536,576,"down")):
    x=torch.randn(M,K); w=torch.randn(N,K)
    wb=w.bfloat16()
    ws = w.abs().amax(1).clamp(min=1e-8)/127
    wq=torch.round(w/ws[:,None]).to(torch.int8).t().contiguous()  # [K,N]
    wqT = torch.round(w/ws[:,None]).to(torch.int8)  # [N,K]
    bf=lambda: torch.nn.functional.linear(x.bfloat16(), wb).float()
    def i8():
        xq, xs = q_rows(x)
        return torch._int_mm(xq, wq).float().mul_(xs).mul_(ws)
    def i8T():
        xq, xs = q_rows(x)
        return torch._int_mm(xq, wqT.t()).float().mul_(xs).mul_(ws)
    def mmonly(): return torch._int_mm(xq0, wq)
    xq0,_=q_rows(x)
    ref = x @ w.t()
    e8 = ((i8()-ref).norm()/ref.norm()).item(); eb=((bf()-ref).norm()/ref.norm()).item()
    print(f"{name:8s} bf16 {t(bf)*1e3:.3f} ms  int8 total {t(i8)*1e3:.3f}  int8 w^T view {t(i8T)*1e3:.3f}  int_mm only {t(mmonly)*1e3:.3f}   rel err bf16 {eb:.4f} int8 {e8:.4f}")
