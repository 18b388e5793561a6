"""The parity oracle: npgpt and torchgpt compared tensor by tensor (see the README)."""
