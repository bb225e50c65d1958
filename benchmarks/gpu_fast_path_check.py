"""GPU check of the fast path (docs/performance.md "Fast path"); seconds on any CUDA machine.

    python benchmarks/gpu_fast_path_check.py OUT.json

1. The attention layouts and masks admit the fused kernels: X-CLIP on the tiny CLIP (vision with
   message tokens: 17 queries over 18 keys, no mask; causal text) runs in bf16 with SDPA restricted
   to flash attention alone, cuDNN alone and memory-efficient alone (a kernel that cannot take the
   inputs is an error, not a silent fallback); the max logit difference to the default choice.
2. No host sync in a training step: X-CLIP forward with the cached class features, the loss,
   backward, gradient norm, finiteness flag, clipping and fused AdamW, twice, under
   ``torch.cuda.set_sync_debug_mode("error")`` (the same step the trainer takes between check
   steps; a prototype torch feature that does not detect every sync).

Kept compact (it was sent to the lent machine as one command line). Run with vclip importable
(the GPU image lacks ftfy: a stub module ``fix_text = lambda s, **k: s`` on PYTHONPATH is enough
for these ASCII class names).
"""
import argparse,json,sys

import torch
from torch.nn.attention import SDPBackend as B, sdpa_kernel
from vclip.backbone import CLIP,get_config
from vclip.methods import METHODS
from vclip.methods.base import Vocabulary
from vclip.engine.optim import build_method_optimizer
from vclip.config import TrainConfig
def bld():
    torch.manual_seed(0);c=METHODS["xclip"];m=c(CLIP(get_config("tiny")),num_frames=4,options=c.parse_options({})).cuda()
    return m,Vocabulary(("a b","c d","e f")),torch.randn(2,4,3,32,32,device="cuda")
def K(n):
    m,v,x=bld();m.eval()
    with torch.no_grad(),torch.autocast("cuda",dtype=torch.bfloat16):
        r=m(x,v).logits
        with sdpa_kernel([getattr(B,n)]):
            m.clear_cache();l=m(x,v).logits
    return "maxdiff %.2e"%float((l.float()-r.float()).abs().max())
def S():
    m,v,x=bld();m.train();o=build_method_optimizer(m,TrainConfig(lr=1e-4));assert o.defaults.get("fused")
    y=torch.tensor([0,2],device="cuda");f=m.class_features(v)
    def st():
        with torch.autocast("cuda",dtype=torch.bfloat16):
            out=m(x,f,y)
        L=sum(t.float() for t in out.losses.values());L.backward()
        p=[q for q in m.parameters() if q.grad is not None];n=torch.nn.utils.get_total_norm([q.grad for q in p])
        ok=torch.isfinite(n)&torch.isfinite(L);torch.nn.utils.clip_grads_with_norm_(p,1.0,n);o.step();o.zero_grad(set_to_none=True);return ok
    st();torch.cuda.synchronize();torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):ok=st()
    finally:torch.cuda.set_sync_debug_mode("default")
    return "no sync, finite=%s"%bool(ok)
def main(argv=None):
    ap=argparse.ArgumentParser(description="GPU check of the fast path");ap.add_argument("out",help="JSON record")
    a=ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check");return 0
    R={"dev":torch.cuda.get_device_name(),"torch":torch.__version__}
    for k,fn in [("FLASH_ATTENTION",lambda:K("FLASH_ATTENTION")),("CUDNN_ATTENTION",lambda:K("CUDNN_ATTENTION")),("EFFICIENT_ATTENTION",lambda:K("EFFICIENT_ATTENTION")),("train_step_sync",S)]:
        try:R[k]="ok "+fn()
        except Exception as e:R[k]="FAILED %s: %s"%(type(e).__name__,str(e)[:600])
        print(k,R[k],flush=True)
    json.dump(R,open(a.out,"w"),indent=1)
    return 0 if all(v.startswith("ok") for k,v in R.items() if k not in ("dev","torch")) else 1

if __name__=="__main__":
    sys.exit(main())
