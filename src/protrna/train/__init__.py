"""Training: the shared loop and the commands built on it.

* :mod:`.loop` - ``train()``, the one training loop (accelerate, accumulation, clipping, logging,
  evaluation, checkpoints), ``TrainConfig`` and the shared command-line flags;
* :mod:`.checkpoint` - atomic checkpoints with exact resume;
* :mod:`.schedule` - linear warmup + cosine learning rate;
* :mod:`.transfer` - ESM-2 -> ProtRNA: loading the source, growing the vocabulary, freezing;
* :mod:`.pretrain` - ``protrna pretrain``, masked-LM transfer training;
* :mod:`.features` - on-disk cache of frozen language-model features, shared by the next two;
* :mod:`.ss` - ``protrna train-ss``, the RotaFormer structure head on a frozen language model;
* :mod:`.finetune` - ``protrna finetune``, sequence / nucleotide heads, optionally with LoRA.
"""
