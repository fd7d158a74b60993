"""The student trained on MathScaleQA (LoRA on CPU, QLoRA on one GPU, full fine-tuning on several through
accelerate launch) and then served for evaluation: the adapter in llama.cpp's form, or a vLLM server."""
