"""Seed 000's training, as the tutorial wrote it: per-sample PIL transforms, SGD, batch 64, 10 epochs.

Kept verbatim in spirit (same network, loader, optimizer and loop) as the baseline the pipeline's
train stage is measured against. Only the data root is a parameter.
"""
import time

import torch
import torch.nn.functional as F
from torch import optim
from torchvision import datasets, transforms

from models.mnist_cnn import MnistCNN


def train(model, train_loader, optimizer):
    model.train()
    for data, target in train_loader:
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()


def test(model, test_loader) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            correct += model(data).argmax(dim=1).eq(target).sum().item()
    return correct / len(test_loader.dataset)


def run(root: str, epochs: int = 10, seed: int = 1) -> dict:
    torch.manual_seed(seed)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_loader = torch.utils.data.DataLoader(
        datasets.MNIST(root, train=True, download=False, transform=transform), batch_size=64, shuffle=True)
    test_loader = torch.utils.data.DataLoader(
        datasets.MNIST(root, train=False, transform=transform), batch_size=1000, shuffle=True)
    model = MnistCNN()
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    start = time.perf_counter()
    for _ in range(epochs):
        train(model, train_loader, optimizer)
        accuracy = test(model, test_loader)  # the tutorial tests after every epoch
    return {"seconds": time.perf_counter() - start, "test_accuracy": accuracy, "epochs": epochs}
