"""MD-Dose's diffusion (paper Fig. 2a): the forward process and loss (``process.py``) and the samplers
(``sampling.py``). The networks never see an alpha: the schedulers (from diffusers) own them."""
