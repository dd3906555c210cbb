"""The CIFAR KD zoo of RepDistiller/mdistiller; importing this package registers every model."""

from . import mobilenetv2, resnet, resnetv2, shufflenetv1, shufflenetv2, vgg, wrn  # noqa: F401
